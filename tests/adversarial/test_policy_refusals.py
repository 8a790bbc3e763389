"""A curious or compromised coordinator proposes runs outside a bank's policy: every one is
refused at its first message, recorded in the bank's ledger, and nothing is trained."""

import math

import pytest
from bank_messages import bank_context, proposal_message, write_bank_files
from conftest import run_cli

from fedrisk.client.bank import bank_for_context
from fedrisk.client.bank_client import BankClient
from fedrisk.client.client_app import app
from fedrisk.config import RunConfig
from fedrisk.privacy.accounting import compose_epsilon
from fedrisk.privacy.policy import BankPolicy, PolicyRefusal
from fedrisk.simulations.runner import delta_below_one_over_n

HONEST = RunConfig(num_server_rounds=2, personalization="none")
# What the coordinator asked for, and the policy key each one breaks.
PROPOSALS = {
    "dp-required": {"dp": False},
    "accountants": {"accountant": "gdp"},
    "secure-aggregation-required": {"secure_aggregation": False},
    "test-fraction": {"test_fraction": 0.3},
    "max-hidden-units": {"hidden_units": "80,1"},
    "max-hidden-layers": {"hidden_units": "8,8,8"},
    "model-kinds": {"model": "logistic"},
    "max-epsilon-per-run": {"target_epsilon": 8.0},
    "max-eval-epsilon-per-run": {"eval_epsilon": 5.0},
    "max-delta": {"target_delta": 1e-3},
}


@pytest.fixture
def bank_files(tmp_path):
    policy = BankPolicy.deployment_default()
    return write_bank_files(tmp_path, BankPolicy(**{**policy.__dict__, "model_kinds": ("mlp",)}))


@pytest.mark.parametrize("key", PROPOSALS)
def test_a_run_outside_the_policy_is_refused_at_the_first_message(bank_files, key):
    config = RunConfig(**{**HONEST.__dict__, **PROPOSALS[key]})
    context = bank_context(bank_files, config)
    reply = app(proposal_message(), context)
    assert reply.has_error() and not reply.has_content()
    assert reply.error.reason == f"bank northeast: refused: {key}"  # and nothing else
    entries = bank_for_context(context).ledger.entries()
    assert [e.kind for e in entries] == ["genesis", "refusal"]  # nothing trained, nothing sent
    assert entries[-1].body["policy_key"] == key


def test_the_honest_run_is_admitted(bank_files):
    reply = app(proposal_message(), bank_context(bank_files, HONEST))
    assert not reply.has_error() and reply.content.array_records


def test_the_run_seed_never_moves_the_banks_split(bank_files):
    splits = []
    for seed in (0, 7):
        config = RunConfig(**{**HONEST.__dict__, "seed": seed})
        splits.append(bank_for_context(bank_context(bank_files, config)).test_labels.sum())
    bank = bank_for_context(bank_context(bank_files, HONEST))
    assert splits[0] == splits[1] == bank.test_labels.sum()


def test_the_lifetime_cap_holds_whatever_scope_the_run_asks_for(bank_files):
    policy = BankPolicy.load(bank_files / "bank-policy.toml")
    BankPolicy(**{**policy.__dict__, "max_epsilon_lifetime": 5.0}).save(
        bank_files / "bank-policy.toml")
    admitted = []
    for run_id in range(1, 6):  # scope "run": each run asks for a fresh ε = 3
        context = bank_context(bank_files, HONEST, run_id)
        bank = bank_for_context(context)
        client = BankClient(bank, RunConfig.from_run_config(dict(context.run_config)), run_id)
        try:
            client.admit()
        except PolicyRefusal as refusal:
            assert refusal.key == "max-epsilon-lifetime"
            break
        weights = client.get_parameters({})
        for server_round in (1, 2):
            client.fit(weights, {"server-round": server_round})
        admitted.append(run_id)
    lifetime = compose_epsilon(bank.ledger.privacy_history(None), 1e-5, "rdp")
    assert 1 <= len(admitted) < 5 and lifetime <= 5.0
    # and mid-run too: a long run admitted elsewhere is stopped at the round that would cross it
    long_run = BankClient(bank, RunConfig(**{**HONEST.__dict__, "num_server_rounds": 20}), 99)
    with pytest.raises(PolicyRefusal, match="max-epsilon-lifetime"):
        for server_round in range(1, 21):
            long_run.fit(weights, {"server-round": server_round})
    total = compose_epsilon([*bank.ledger.privacy_history(None)], 1e-5, "rdp")
    assert total <= 5.0 and bank.ledger.entries()[-1].kind != "privacy_spend"


def test_gdp_never_decides_and_the_strictest_accountant_does(bank_files):
    context = bank_context(bank_files, RunConfig(**{**HONEST.__dict__, "accountant": "prv"}))
    bank = bank_for_context(context)
    client = BankClient(bank, RunConfig.from_run_config(dict(context.run_config)), 1)
    assert client.accountants == ("rdp", "prv")
    _, _, metrics = client.fit(client.get_parameters({}), {"server-round": 1})
    history = bank.ledger.privacy_history("1")
    planned = [(history[0][0], history[0][1], history[0][2] * 2)]
    for accountant in ("rdp", "prv"):  # the whole planned run meets ε = 3 under both
        assert compose_epsilon(planned, 1e-5, accountant) <= 3.0 + 1e-6
    assert math.isclose(metrics["epsilon"], max(compose_epsilon(history, 1e-5, a)
                                                 for a in ("rdp", "prv")))


def test_a_simulated_consortium_refuses_a_non_private_run_at_once(tmp_path, bank_files):
    result_dir = tmp_path / "refused"
    result = run_cli("simulate", "--rounds", "2", "--no-dp", "--bank-policy",
                     str(bank_files / "bank-policy.toml"), "--output-dir", str(result_dir))
    assert result.returncode == 2
    assert result.stderr.count("refused: dp-required") == 5
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    for ledger in (result_dir / "banks").rglob("*.jsonl"):
        lines = ledger.read_text().splitlines()
        assert {line.split('"kind":"')[1].split('"')[0] for line in lines} == {"genesis",
                                                                                "refusal"}


def test_the_default_simulation_satisfies_the_simulation_default_policy(dp_run):
    _, metrics = dp_run
    assert all(b["rounds_joined"] == 3 for b in metrics["banks"])
    assert all("refused" not in f for r in metrics["rounds"] for f in r["failures"])


def test_a_run_too_few_banks_accept_for_secure_aggregation_stops_at_once(tmp_path):
    """One bank alone under SecAgg+ would hand the coordinator its own update as the sum."""
    policy = BankPolicy.simulation_default(0, 0.2)
    BankPolicy(**{**policy.__dict__, "max_delta": 1e-3}).save(tmp_path / "policy.toml")
    # δ = 7.2e-4 is below 1/n only for south_central (1,313 train rows); the others refuse.
    result = run_cli("simulate", "--rounds", "1", "--target-delta", "7.2e-4", "--bank-policy",
                     str(tmp_path / "policy.toml"), "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: only 1 of 5 banks accepted the run (secure "
                                    "aggregation needs at least 3): ")
    assert result.stderr.count("refused: require-delta-below-1-over-n") == 4
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_simulation_without_target_delta_follows_the_largest_bank():
    assert delta_below_one_over_n(99_999, 1e-5) == 1e-5
    assert delta_below_one_over_n(100_000, 1e-5) == 1e-6  # δ = 1/n is not below 1/n
    assert delta_below_one_over_n(210_000, 1e-5) == 1e-6
    assert delta_below_one_over_n(2_000_000, 1e-5) == 1e-7
    assert delta_below_one_over_n(500, 1e-6) == 1e-6  # a δ given below 1/n is kept
