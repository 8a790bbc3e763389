"""Institution-level DP (Flower's client-side fixed clipping) under SecAgg+: each bank clips
its own round update and records it, the coordinator noises the sum and reports its own ε."""

import json
import math

import pytest
from bank_messages import bank_context, write_bank_files
from conftest import simulate, write_embedded
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from fedrisk.client.bank import bank_for_context
from fedrisk.client.bank_client import BankClient
from fedrisk.client.client_app import app
from fedrisk.config import ConfigError, RunConfig
from fedrisk.privacy.accounting import compose_epsilon, weighted_mean_noise_multiplier
from fedrisk.privacy.policy import BankPolicy
from fedrisk.privacy.verify import verify_path

ROUNDS, BANKS, CLIPPING_NORM = 2, 3, 1.0


@pytest.fixture(scope="module")
def both_run(tmp_path_factory) -> tuple:
    """One run with record- and institution-level DP: 3 credit_data banks, 2 rounds, SecAgg+."""
    folder = tmp_path_factory.mktemp("institution")
    table, contract, _ = write_embedded("credit_data", folder)
    output = folder / "run"
    metrics = simulate(output, "--data", str(table), "--contract", str(contract), "--banks",
                       str(BANKS), "--rounds", str(ROUNDS), "--dp-level", "both",
                       "--personalization", "none", "--local-epochs", "2")  # updates > C
    return output, metrics


def clipping_notes(output) -> list[dict]:
    notes = []
    for ledger in (output / "banks").glob("*/ledgers/*.jsonl"):
        notes += [json.loads(line)["body"] for line in ledger.read_text().splitlines()
                  if '"update clipped"' in line]
    return notes


def test_both_levels_run_under_secagg_and_report_their_own_epsilon(both_run):
    output, metrics = both_run
    assert metrics["privacy"] == "DP-SGD (record-level) + institution-level DP"
    assert metrics["config"]["secure_aggregation"] is True
    institution = metrics["institution_dp"]
    sizes = [bank["n_train"] for bank in metrics["banks"]]
    sigma = weighted_mean_noise_multiplier(1.0, BANKS, sizes)  # the largest bank sets it
    assert institution["effective_noise_multiplier"] == pytest.approx(sigma)
    assert sigma < 1.0  # Dirichlet banks differ in size: less than Flower's nominal σ
    assert institution["rounds"] == ROUNDS and institution["sample_rate"] == 1.0
    assert institution["epsilon"] == pytest.approx(compose_epsilon([(sigma, 1.0, ROUNDS)], 1e-5))
    assert math.isfinite(institution["epsilon"]) and institution["epsilon"] > 3
    assert "coordinator" in institution["trust"]
    for bank in metrics["banks"]:  # record-level DP-SGD still ran, with its own ε
        assert 0 < bank["epsilon"] <= 3.0


def test_each_bank_clips_its_own_update_and_the_coordinator_sees_only_the_sum(both_run):
    output, metrics = both_run
    notes = clipping_notes(output)
    assert len(notes) == BANKS * ROUNDS
    for note in notes:
        assert note["clipping_norm"] == CLIPPING_NORM
        assert note["norm_after"] <= CLIPPING_NORM * (1 + 1e-5)
        assert note["norm_before"] > note["norm_after"]  # DP-SGD updates are longer: clipped
    clipped = {note["update_sha256"] for note in notes}
    for round_record in metrics["rounds"]:
        assert len(round_record["received_update_sha256"]) == 1  # one masked sum
        assert not clipped & set(round_record["received_update_sha256"])
    assert all(result.ok for result in verify_path(output / "banks"))


def context_for(folder, config: RunConfig) -> Context:
    return bank_context(write_bank_files(folder, BankPolicy.simulation_default()), config)


def test_a_coordinator_asking_a_looser_clipping_norm_is_refused(tmp_path):
    config = RunConfig(num_server_rounds=1, personalization="none", dp_level="institution",
                       secure_aggregation=False, output_dir=str(tmp_path))
    context = context_for(tmp_path, config)
    weights = BankClient(bank_for_context(context), config, 1).get_parameters({})
    replies = {}
    for asked in (100.0, CLIPPING_NORM):  # the run's (and policy-approved) norm is 1.0
        fit_ins = FitIns(ndarrays_to_parameters(weights),
                         {"server-round": 1, "clipping_norm": asked})
        replies[asked] = app(Message(compat.fitins_to_recorddict(fit_ins, keep_input=True),
                                     dst_node_id=1, message_type=MessageType.TRAIN,
                                     group_id="1"), context)
    assert replies[100.0].has_error()
    assert replies[100.0].error.reason == "bank northeast: refused: dp-levels"
    assert not replies[CLIPPING_NORM].has_error()
    kinds = [entry.kind for entry in bank_for_context(context).ledger.entries()]
    assert "refusal" in kinds and kinds[-1] == "egress"  # the honest request went through


def test_a_bank_policy_accepts_or_refuses_each_dp_level():
    institution = RunConfig(dp_level="institution")
    with pytest.raises(Exception, match="dp-required"):  # its local training is not DP-SGD
        BankPolicy.deployment_default().check_run(institution)
    BankPolicy.deployment_default().check_run(RunConfig(dp_level="both"))
    record_only = BankPolicy(dp_levels=("record",))
    with pytest.raises(Exception, match="dp-levels"):
        record_only.check_run(RunConfig(dp_level="both"))
    BankPolicy.simulation_default().check_run(institution)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"dp-level": "institution", "strategy": "fedadam"}, "strategy"),
    ({"dp-level": "both", "dp": False}, "dp-level"),
    ({"dp-level": "everything"}, "dp-level"),
    ({"institution-clipping-norm": 0}, "institution-clipping-norm"),
])
def test_institution_level_settings_are_validated(overrides, key):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_run_config(overrides)


def test_the_audit_claims_no_record_level_epsilon_for_institution_level_dp_alone():
    from fedrisk.audit.bank import _verdict

    attack = {"epsilon_lower_bound": 0.4}
    part = {"dp_spec": {"epsilon_global_model": None, "epsilon": None},
            "membership": {"global": attack},
            "eval_attack": {"epsilon_lower_bound": 0.1, "epsilon_release": 0.5}}
    alone = _verdict(part, dp=True, record_level=False)
    assert alone["global"]["passed"] is None and alone["global"]["claimed_epsilon"] is None
    assert alone["evaluation"]["passed"] is True and alone["audit_passed"] is True
    # with record-level DP claimed, a missing record-level ε fails the audit
    assert _verdict(part, dp=True, record_level=True)["audit_passed"] is False
