"""Faults in a deployed consortium, with real processes on loopback (one scenario, one run).

Why a fourth bank: with 3 banks, SecAgg+ here uses 3 shares and a threshold of 2, and
each bank's deployment policy has ``min-cohort = 3`` (fewer summed banks would let the
two that are left learn each other's update from the aggregate). A bank lost mid-round
leaves 2 active banks, so every bank refuses to unmask: by design, 3 banks cannot
survive a dropout. With 4 (4 shares, threshold 3) one bank may drop: the 3 left hold 3
of its shares and still form a cohort of 3. The session consortium gets a fourth bank
for this module (registered, started, then stopped and unregistered at the end).

The scenario, one 3-round run:

1. round 1: the fourth bank's SuperNode is SIGKILLed while it trains (after its
   write-ahead spend). SecAgg+ reconstructs around it once the SuperLink sees it offline
   (Flower's heartbeat: 2 × 30 s), and the round completes with 3 banks;
2. the bank is started again with the consortium's own command (:func:`start_bank`)
   and trains in round 2; its ledger verifies;
3. after round 2's checkpoint the SuperLink is SIGKILLed (its SuperExec and ServerApp
   with it), started again on the same database (:func:`restart_superlink`), and the
   run resumed with ``consortium run --resume``: round 3 runs, each round appears once.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from deployment import BANKS, RUN_TIMEOUT, START_TIMEOUT

from fedrisk.consortium import (
    Layout,
    add_bank,
    consortium_run,
    registered_nodes,
    restart_superlink,
    start_bank,
    stop_bank,
    unregister_bank,
)
from fedrisk.consortium.layout import read_bank, read_settings, write_settings
from fedrisk.consortium.processes import read_records
from fedrisk.privacy.chain import TrustedKeys
from fedrisk.privacy.keys import load_public_key
from fedrisk.privacy.verify import verify_ledger
from fedrisk.server.checkpoint import read_checkpoint

FOURTH = "pacific"
RUN = "faults"
ROUNDS = 3
TARGET_EPSILON = 3.0

pytestmark = pytest.mark.slow  # ~4 min: `bash .ci/run -m slow`


@pytest.fixture(scope="module")
def four_banks(consortium):
    """The session consortium with a fourth bank (`consortium add-bank`, on the first bank's
    table), connected; afterwards stopped, unregistered and removed from consortium.toml."""
    layout = Layout.at(consortium)
    settings = read_settings(layout)
    add_bank(consortium, FOURTH, data=read_bank(layout.bank_dir(BANKS[0])).data)
    try:
        start_bank(consortium, FOURTH, timeout=START_TIMEOUT)
        yield consortium
    finally:
        stop_bank(consortium, FOURTH)
        unregister_bank(consortium, FOURTH)
        write_settings(layout, settings)


@pytest.fixture(scope="module")
def faulted(four_banks):
    """The scenario of the module docstring; returns the resumed run's metrics and timings."""
    root = four_banks
    layout = Layout.at(root)
    output = layout.runs / RUN
    lines: list[str] = []
    first = Background(lambda: consortium_run(
        root, {"num-server-rounds": ROUNDS, "personalization": "none",
               "target-epsilon": TARGET_EPSILON}, name=RUN, timeout=RUN_TIMEOUT,
        echo=lines.append))
    started = time.monotonic()
    wait_for(lambda: spends(ledger_of(root, FOURTH)) >= 1, "the fourth bank's first spend")
    supernode = record(layout, FOURTH)
    os.kill(supernode.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: any("aggregate_fit: received" in line for line in lines),
             "round 1 to aggregate after the kill")
    reconstructed = time.monotonic()
    stop_bank(root, FOURTH)  # what is left of it (its executor)
    start_bank(root, FOURTH, timeout=START_TIMEOUT)
    wait_for(lambda: checkpointed_round(output) >= 2, "round 2's checkpoint")
    os.killpg(record(layout, "superlink").pid, signal.SIGKILL)
    crashed = first.join()
    restart_superlink(root, timeout=START_TIMEOUT)
    wait_for(lambda: all_online(root), "every bank to reconnect to the new SuperLink")
    resumed_at = time.monotonic()
    metrics = consortium_run(root, {}, resume=RUN, timeout=RUN_TIMEOUT)
    return {"metrics": metrics, "crashed": crashed, "run_id": metrics["run_id"],
            "seconds": {"until_kill": killed - started, "reconstruction": reconstructed - killed,
                        "resume": time.monotonic() - resumed_at,
                        "total": time.monotonic() - started}}


def test_a_bank_killed_mid_round_is_reconstructed_around_and_rejoins(four_banks, faulted):
    metrics = faulted["metrics"]
    first, second, third = metrics["rounds"]
    assert first["banks_trained"] == 3 and first["banks_failed"] == 1
    assert "Node Unavailable" in first["failures"][0]
    assert second["banks_trained"] == 4 and third["banks_trained"] == 4
    pacific = next(b for b in metrics["banks"] if b["id"] == FOURTH)
    assert 0 < pacific["epsilon"] <= TARGET_EPSILON
    layout = Layout.at(four_banks)
    for bank in [*BANKS, FOURTH]:  # every ledger verifies against its registered key
        result = verify_ledger(ledger_of(four_banks, bank), TrustedKeys(
            every_bank=load_public_key(layout.ledger_public_key(bank))))
        assert result.ok, (bank, result)
    # charged for round 1 (write-ahead) although it never sent; nothing charged twice
    assert spends(ledger_of(four_banks, FOURTH), faulted["run_id"]) == ROUNDS
    print("faults scenario seconds:", json.dumps(faulted["seconds"]))


def test_a_run_whose_superlink_crashed_resumes_at_the_next_round(four_banks, faulted):
    metrics = faulted["metrics"]
    assert isinstance(faulted["crashed"], Exception)  # the first `consortium run` failed
    assert metrics["resumed_from_round"] == 2
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    for bank in BANKS:  # trained every round once: no round charged twice across the crash
        assert spends(ledger_of(four_banks, bank), faulted["run_id"]) == ROUNDS
    assert all(0 < b["epsilon"] <= TARGET_EPSILON for b in metrics["banks"])


class Background:
    """A call run in a thread; ``join`` returns its result or the exception it raised."""

    def __init__(self, call) -> None:
        self.outcome: object = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call) -> None:
        try:
            self.outcome = call()
        except Exception as error:  # noqa: BLE001 - the test inspects it
            self.outcome = error

    def join(self) -> object:
        self.thread.join(RUN_TIMEOUT)
        return self.outcome


def wait_for(condition, what: str, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ledger_of(root: Path, bank: str) -> Path | None:
    found = sorted((Layout.at(root).bank_dir(bank) / "state").rglob("*.jsonl"))
    return found[0] if found else None


def spends(ledger: Path | None, run_id: str | None = None) -> int:
    if ledger is None or not ledger.exists():
        return 0
    return sum(1 for line in ledger.read_text().splitlines()
               if '"privacy_spend"' in line and (run_id is None or f'"{run_id}"' in line))


def record(layout: Layout, name: str):
    return next(r for r in read_records(layout.pids) if r.name == name)


def checkpointed_round(output: Path) -> int:
    try:
        return read_checkpoint(output).round
    except Exception:  # noqa: BLE001 - none yet, or being replaced
        return 0


def all_online(root: Path) -> bool:
    try:
        return all(n.get("status") == "online" for n in registered_nodes(root))
    except Exception:  # noqa: BLE001 - the SuperLink is still starting
        return False
