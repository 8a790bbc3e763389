"""A coordinator that "resumes" a run, re-proposes its run id from round 1 or repeats rounds
cannot make a bank spend more than the run's target: the bank plans the rest of the run from
its own ledger, and refuses (``refused: privacy-budget``) what its budget cannot pay."""

import pytest
from bank_messages import bank_context, proposal_message, train_message, write_bank_files
from flwr.app import Context, Message

from fedrisk.client.bank import bank_for_context
from fedrisk.client.bank_client import BankClient
from fedrisk.client.client_app import app
from fedrisk.config import RunConfig
from fedrisk.privacy.accounting import compose_epsilon
from fedrisk.privacy.policy import BankPolicy

DELTA = 1e-5
HONEST = RunConfig(num_server_rounds=4, personalization="none", secure_aggregation=False,
                   local_epochs=1, target_epsilon=2.0, target_delta=DELTA)
REFUSED_BUDGET = "bank northeast: refused: privacy-budget"


@pytest.fixture
def bank_files(tmp_path):
    return write_bank_files(tmp_path, BankPolicy(**{
        **BankPolicy.deployment_default().__dict__, "secure_aggregation_required": False}))


def propose(context: Context) -> Message:
    return app(proposal_message(), context)


def train(context: Context, server_round: int) -> Message:
    return app(train_message(context, server_round), context)


def run_epsilon(context: Context, run_id: str) -> float:
    """The run's ε as the bank's own ledger composes it."""
    history = bank_for_context(context).ledger.privacy_history(run_id)
    return compose_epsilon(history, DELTA, "rdp")


def spends(context: Context, run_id: str) -> list[dict]:
    return [e.body for e in bank_for_context(context).ledger.entries()
            if e.kind == "privacy_spend" and e.body["run_id"] == run_id]


@pytest.mark.parametrize("run_id_key", [False, True], ids=["flower-run-id", "run-id-key"])
def test_a_run_resumed_after_a_crash_in_round_3_finishes_within_its_target(bank_files,
                                                                          run_id_key):
    # a resumed run is the same run at the bank: the same Flower run id (simulation may
    # reuse it), or a new one with the run-config key run-id naming the first (deployment)
    named = {"run_id": "11"} if run_id_key else {}
    first = bank_context(bank_files, RunConfig(**{**HONEST.__dict__, **named}), 11)
    assert not propose(first).has_error()
    for server_round in (1, 2, 3):  # the coordinator dies after the bank charged round 3
        assert not train(first, server_round).has_error()
    resumed = bank_context(bank_files, RunConfig(**{**HONEST.__dict__, **named}),
                          12 if run_id_key else 11)
    assert not propose(resumed).has_error()
    for server_round in (3, 4):  # the checkpoint was of round 2: round 3 runs again
        reply = train(resumed, server_round)
        assert not reply.has_error(), reply.error.reason
    bodies = spends(resumed, "11")
    assert [b["round"] for b in bodies] == [1, 2, 3, 3, 4]
    planned = bodies[0]["noise_multiplier"]
    # the rounds after the repeat are re-planned from the ledger: noisier, within the policy
    assert planned < bodies[-1]["noise_multiplier"] <= 2.0 * planned
    assert 0.95 * HONEST.target_epsilon < run_epsilon(resumed, "11") <= HONEST.target_epsilon


def test_a_finished_run_proposed_again_is_admitted_with_nothing_left_to_plan(bank_files):
    # the coordinator died after the last round's checkpoint: the resume only writes outputs
    config = RunConfig(**{**HONEST.__dict__, "num_server_rounds": 2,
                          "personalization": "finetune"})
    first = bank_context(bank_files, config, 41)
    assert not propose(first).has_error()
    for server_round in (1, 2):
        assert not train(first, server_round).has_error()
    client = BankClient(bank_for_context(first),
                        RunConfig.from_run_config(dict(first.run_config)), "41")
    client.evaluate(client.get_parameters({}), {"server-round": 2, "personalize": True})
    spent = run_epsilon(first, "41")
    reply = propose(bank_context(bank_files, config, 41))  # a fresh context: admitted again
    assert not reply.has_error(), reply.error.reason
    assert run_epsilon(first, "41") == spent <= config.target_epsilon


def test_re_proposing_and_repeating_rounds_never_spends_more_than_the_target(bank_files):
    # the same run id twice: a coordinator reusing Flower's run id (no run-id key)
    honest = bank_context(bank_files, HONEST, 21)
    assert not propose(honest).has_error()
    for server_round in range(1, 5):
        assert not train(honest, server_round).has_error()
    spent = run_epsilon(honest, "21")
    assert spent <= HONEST.target_epsilon
    attack = bank_context(bank_files, HONEST, 21)
    propose(attack)
    replies = [train(attack, server_round) for server_round in [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]]
    refused = [r for r in replies if r.has_error()]
    assert refused and all(r.error.reason == REFUSED_BUDGET for r in refused)
    assert run_epsilon(attack, "21") <= HONEST.target_epsilon
    assert len(spends(attack, "21")) < 4 + len(replies)  # bounded: no endless noisy rounds
    refusals = [e.body for e in bank_for_context(attack).ledger.entries()
                if e.kind == "refusal"]
    assert refusals and {r["policy_key"] for r in refusals} == {"privacy-budget"}


def test_a_known_run_id_with_another_config_is_refused(bank_files):
    modest = RunConfig(**{**HONEST.__dict__, "target_epsilon": 1.0})
    first = bank_context(bank_files, modest, 31)
    assert not propose(first).has_error()
    for server_round in (1, 2):
        assert not train(first, server_round).has_error()
    # "resume" the same run with a budget 3 times larger (still within the bank's policy)
    attack = bank_context(bank_files, RunConfig(**{**modest.__dict__, "target_epsilon": 3.0}), 31)
    reply = propose(attack)
    assert reply.has_error() and reply.error.reason == "bank northeast: refused: run-config"
    for server_round in (3, 4):
        train(attack, server_round)
    assert run_epsilon(attack, "31") <= 1.0
    # and so is a resume naming it with the run-id key
    named = RunConfig(**{**modest.__dict__, "target_epsilon": 3.0, "run_id": "31",
                         "resume": True})
    assert propose(bank_context(bank_files, named, 32)).error.reason == (
        "bank northeast: refused: run-config")
