"""A compromised coordinator submits runs outside the banks' policies to a deployed consortium
(real SuperLink, proxy, SuperNodes and executors on loopback): every bank refuses at the run's
first message, within a minute, with the refusal in its own signed ledger."""

import time

import pytest
from deployment import BANKS, RUN_TIMEOUT

from fedrisk.consortium import Layout, RunFailedError, consortium_run
from fedrisk.privacy.verify import read_ledger

# What the coordinator asked for, and the policy key every bank names. Every key of
# the policy is refused by the same policy mod in test_policy_refusals.py (real messages,
# in-process, seconds each); here two of them take the deployed path end to end (~13 s each).
PROPOSALS = {
    "dp-required": {"dp": False},
    "secure-aggregation-required": {"secure-aggregation": False},
}


def refusals(root, run_key: str) -> dict[str, int]:
    counts = {}
    for bank in BANKS:  # a bank that has not answered any run yet has no ledger yet
        ledgers = (Layout.at(root).bank_dir(bank) / "state" / "ledgers").glob("*.jsonl")
        counts[bank] = sum(1 for ledger in ledgers for e in read_ledger(ledger)
                           if e.kind == "refusal" and e.body.get("policy_key") == run_key)
    return counts


@pytest.mark.parametrize("key", PROPOSALS)
def test_a_deployed_consortium_refuses_runs_outside_the_banks_policies(consortium, key):
    before = refusals(consortium, key)
    started = time.monotonic()
    with pytest.raises(RunFailedError) as failed:
        consortium_run(consortium, {"num-server-rounds": 1, **PROPOSALS[key]},
                       name=f"refused-{key}", timeout=RUN_TIMEOUT, echo=lambda _: None)
    assert time.monotonic() - started < 60
    message = str(failed.value)
    for bank in BANKS:
        assert f"bank {bank}: refused: {key}" in message
    after = refusals(consortium, key)
    assert all(after[bank] == before[bank] + 1 for bank in BANKS)
    output = Layout.at(consortium).runs / f"refused-{key}"
    assert not (output / "metrics.json").exists() and not (output / "model.safetensors").exists()
