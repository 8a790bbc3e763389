"""The egress guard blocks every way a malicious ClientApp tries to send rows out."""

import math
import os

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from fedrisk.client.bank import bank_for_context
from fedrisk.client.bank_client import BankClient
from fedrisk.client.guard import egress_guard_mod
from fedrisk.config import RunConfig
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.privacy.egress import EgressPolicy, evaluated_size_bound
from fedrisk.privacy.secagg_replies import _one_polynomial


@pytest.fixture
def context(tmp_path):
    # Messages are stamped with the identity of the task that creates them (the coordinator).
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    table = embedded_banks("lending_club")["northeast"]
    _, contract = load_embedded("lending_club")
    table.to_csv(tmp_path / "bank.csv", index=False)
    contract.save(tmp_path / "contract.toml")
    node_config = {"bank-id": "northeast", "data-path": str(tmp_path / "bank.csv"),
                   "contract-path": str(tmp_path / "contract.toml"),
                   "state-dir": str(tmp_path / "state")}
    run_config = RunConfig(dp=False, output_dir=str(tmp_path)).to_run_config()
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config=run_config)


def honest_client(context: Context) -> BankClient:
    config = RunConfig.from_run_config(dict(context.run_config))
    return BankClient(bank_for_context(context), config, context.run_id)


def raw_rows(context: Context) -> np.ndarray:
    return bank_for_context(context).train_features[:32]


def train_message(context: Context) -> Message:
    weights = honest_client(context).get_parameters({})
    content = compat.fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(weights), {"server-round": 1}), True)
    return Message(content=content, dst_node_id=1, message_type="train", group_id="1")


def evaluate_message(context: Context) -> Message:
    weights = honest_client(context).get_parameters({})
    content = compat.evaluateins_to_recorddict(
        EvaluateIns(ndarrays_to_parameters(weights), {"server-round": 1}), True)
    return Message(content=content, dst_node_id=1, message_type="evaluate", group_id="1")


class Malicious(NumPyClient):
    """An honest bank client whose replies are altered by ``attack``."""

    def __init__(self, context: Context, attack: str) -> None:
        self.honest = honest_client(context)
        self.rows = raw_rows(context)
        self.attack = attack

    def get_parameters(self, config):
        return self.honest.get_parameters(config)

    def fit(self, parameters, config):
        update, n, metrics = self.honest.fit(parameters, config)
        if self.attack == "extra_array":
            update = [*update, self.rows]
        elif self.attack == "reshaped_array":
            update = [self.rows.astype(np.float32), *update[1:]]
        elif self.attack == "string_metric":
            metrics["note"] = np.array2string(self.rows[0])
        elif self.attack == "rows_in_bank_id":
            metrics["bank_id"] = ",".join(map(str, self.rows[0]))
        elif self.attack == "bytes_metric":
            metrics["train_loss"] = self.rows.tobytes()
        elif self.attack == "rows_in_allowed_key":
            metrics["epsilon"] = ",".join(map(str, self.rows[0]))
        elif self.attack == "exception_text":
            raise RuntimeError("rows: " + ",".join(map(str, self.rows[0])))
        return update, n, metrics

    def evaluate(self, parameters, config):
        loss, n, metrics = self.honest.evaluate(parameters, config)
        if self.attack == "extra_eval_metric":
            metrics["row_0_income"] = float(self.rows[0, 0])
        elif self.attack == "histogram_out_of_range":
            metrics["hist_pos_999"] = 1
        return loss, n, metrics


def add_record_mod(msg, context, call_next):
    reply = call_next(msg, context)
    reply.content.config_records["exfil"] = ConfigRecord({"rows": [1.0, 2.0, 3.0]})
    return reply


def trailing_bytes_mod(msg, context, call_next):
    reply = call_next(msg, context)
    record = reply.content.array_records["fitres.parameters"]
    first = next(iter(record.values()))
    first.data = first.data + raw_rows(context).tobytes()
    return reply


FIT_ATTACKS = ["extra_array", "reshaped_array", "string_metric", "rows_in_bank_id",
               "bytes_metric", "rows_in_allowed_key", "exception_text"]


@pytest.mark.parametrize("attack", FIT_ATTACKS)
def test_malicious_fit_replies_are_blocked(context, attack):
    app = ClientApp(client_fn=lambda ctx: Malicious(ctx, attack).to_client(),
                    mods=[egress_guard_mod])
    reply = app(train_message(context), context)
    assert reply.has_error()
    row_text = ",".join(map(str, raw_rows(context)[0]))
    assert row_text not in reply.error.reason and len(reply.error.reason) < 120
    kinds = [e.kind for e in bank_for_context(context).ledger.entries()]
    assert "egress" not in kinds
    assert kinds[-1] == ("note" if attack == "exception_text" else "blocked")


@pytest.mark.parametrize("attack", ["extra_eval_metric", "histogram_out_of_range"])
def test_malicious_evaluate_replies_are_blocked(context, attack):
    app = ClientApp(client_fn=lambda ctx: Malicious(ctx, attack).to_client(),
                    mods=[egress_guard_mod])
    reply = app(evaluate_message(context), context)
    assert reply.has_error()


@pytest.mark.parametrize("mod", [add_record_mod, trailing_bytes_mod])
def test_records_smuggled_by_an_inner_mod_are_blocked(context, mod):
    app = ClientApp(client_fn=lambda ctx: honest_client(ctx).to_client(),
                    mods=[egress_guard_mod, mod])
    assert app(train_message(context), context).has_error()


def test_the_honest_path_is_unchanged_and_recorded(context):
    guarded = ClientApp(client_fn=lambda ctx: honest_client(ctx).to_client(),
                        mods=[egress_guard_mod])
    bare = ClientApp(client_fn=lambda ctx: honest_client(ctx).to_client())
    for make in (train_message, evaluate_message):
        with_guard = guarded(make(context), context)
        without = bare(make(context), context)
        assert not with_guard.has_error()
        assert with_guard.content.array_records.keys() == without.content.array_records.keys()
        for name, record in with_guard.content.array_records.items():
            assert [a.data for a in record.values()] == [
                a.data for a in without.content.array_records[name].values()]
    entries = bank_for_context(context).ledger.entries()
    egress = [e for e in entries if e.kind == "egress"]
    assert [e.body["message_kind"] for e in egress] == ["train", "evaluate"]


def test_secagg_shares_off_the_banks_polynomial_are_caught():
    """A SecAgg+ share is 16 free-looking bytes per block: only its polynomial pins it down.

    Code inside a bank that rewrote one share (to carry 16 bytes of a row) or shared another
    secret would pass every length check; the guard's polynomial check must catch it.
    """
    secret = os.urandom(306)  # the length of the bank's SECP384R1 secret key (PEM)
    shares = create_shares(secret, 9, 15)
    assert _one_polynomial(shares, 9, secret)
    for index in (0, 8, 14):  # a share fixing the polynomial, and ones checked against it
        smuggled = list(shares)
        smuggled[index] = shares[index][:100] + b"row bytes here!!" + shares[index][116:]
        assert not _one_polynomial(smuggled, 9, secret)
    assert not _one_polynomial(create_shares(os.urandom(306), 9, 15), 9, secret)
    assert not _one_polynomial(shares, 5, secret)  # a higher-degree polynomial than agreed
    assert not _one_polynomial([*shares[:14], shares[0]], 9, secret)  # an index reused
    assert not _one_polynomial(shares[:8], 9, secret)  # fewer shares than the threshold


def test_an_honest_noisy_evaluation_size_passes_the_guard():
    """num_examples under DP is the sum of 2 x bins noisy counts, not one noisy count."""
    sigma, n_test, bins = 7.06, 400, 10  # σ of eval-epsilon 1 over 3 releases
    margin = math.ceil(8 * sigma) + 1  # the guard's per-count margin
    policy = EgressPolicy("west", (), bins, n_test=n_test, noise_margin=margin)
    rng = np.random.default_rng(0)
    sizes = n_test + rng.normal(0.0, sigma, (100_000, 2 * bins)).sum(axis=1)
    assert (sizes > n_test + margin).mean() > 0.02  # what a per-count margin blocked
    assert (sizes > evaluated_size_bound(policy)).sum() == 0
    assert evaluated_size_bound(policy) < n_test + 100 * sigma  # still a bound
