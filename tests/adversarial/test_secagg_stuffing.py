"""Code inside a bank tries to send the bank's rows in every field it can; the guard blocks each.

The malicious code is an inner mod between the egress guard and Flower's SecAgg+ mod (as
a compromised dependency inside the bank would be): it rewrites what Flower produced.
The coordinator runs the protocol honestly with the other banks. Every stuffing ends in
an error reply, a ``blocked`` entry in the bank's ledger and none of its rows in any reply;
an honest round passes byte for byte, with every blob that left in the ledger.
"""

import struct

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common import EvaluateIns, bytes_to_ndarray, ndarray_to_bytes, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from secagg_coordinator import (
    NODE_IDS,
    Coordinator,
    fit_content,
    initial_weights,
    leaks,
    make_banks,
    train_message,
)

from fedrisk.client.bank import bank_for_context
from fedrisk.client.client_app import app, client_fn
from fedrisk.client.guard import egress_guard_mod
from fedrisk.client.secagg import secure_aggregation_mod

VICTIM = NODE_IDS[0]


def rows_of(context: Context) -> np.ndarray:
    """All of the bank's encoded training rows (northeast: 1,540 x 40 float32, 246,400 bytes)."""
    return bank_for_context(context).train_features


def chunks(data: bytes, size: int = 4096) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def secagg(reply: Message):
    return reply.content.config_records[RECORD_KEY_CONFIGS]


def rows_in_public_keys(reply: Message, rows: np.ndarray) -> None:
    data = rows.tobytes()
    secagg(reply)[Key.PUBLIC_KEY_1], secagg(reply)[Key.PUBLIC_KEY_2] = data[:4096], data[4096:8192]


def rows_in_group_id(reply: Message, rows: np.ndarray) -> None:
    reply.metadata.group_id = ",".join(map(str, rows[0]))


def rows_as_ciphertexts(reply: Message, rows: np.ndarray) -> None:
    blobs, dsts = chunks(rows.tobytes()), list(secagg(reply)[Key.DESTINATION_LIST])
    secagg(reply)[Key.DESTINATION_LIST] = [dsts[i % len(dsts)] for i in range(len(blobs))]
    secagg(reply)[Key.CIPHERTEXT_LIST] = blobs


def rows_as_well_sized_ciphertexts(reply: Message, rows: np.ndarray) -> None:
    data, ciphertexts = rows.tobytes(), secagg(reply)[Key.CIPHERTEXT_LIST]
    size = len(ciphertexts[0])
    secagg(reply)[Key.CIPHERTEXT_LIST] = [data[i * size:(i + 1) * size]
                                          for i in range(len(ciphertexts))]


def rows_in_masked_vector(reply: Message, rows: np.ndarray) -> None:
    """Rows as integers below the modulus in the masked model arrays' exact shapes and dtype.

    The masked weight factor stays as Flower produced it.
    """
    values = np.frombuffer(rows.tobytes(), np.uint32).astype(np.int64)
    weight, *blobs = secagg(reply)[Key.MASKED_PARAMETERS]
    stuffed, start = [weight], 0
    for blob in blobs:
        shape = bytes_to_ndarray(blob).shape
        size = int(np.prod(shape))
        stuffed.append(ndarray_to_bytes(values[start:start + size].reshape(shape)))
        start += size
    secagg(reply)[Key.MASKED_PARAMETERS] = stuffed


def rows_as_unmask_shares(reply: Message, rows: np.ndarray) -> None:
    blobs, nids = chunks(rows.tobytes()), list(secagg(reply)[Key.NODE_ID_LIST])
    secagg(reply)[Key.NODE_ID_LIST] = [nids[i % len(nids)] for i in range(len(blobs))]
    secagg(reply)[Key.SHARE_LIST] = blobs


SECAGG_STUFFING = {
    "rows_in_public_keys": ("setup", rows_in_public_keys),
    "rows_in_group_id": ("setup", rows_in_group_id),
    "rows_as_ciphertexts": ("share_keys", rows_as_ciphertexts),
    "rows_as_well_sized_ciphertexts": ("share_keys", rows_as_well_sized_ciphertexts),
    "rows_in_masked_vector": ("collect_masked_vectors", rows_in_masked_vector),
    "rows_as_unmask_shares": ("unmask", rows_as_unmask_shares),
}


def on_stage(stage: str, alter):
    """An inner mod that rewrites the bank's reply to one SecAgg+ stage."""
    def mod(msg: Message, context: Context, call_next) -> Message:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        current = configs.get(Key.STAGE) if configs is not None else None
        reply = call_next(msg, context)
        if current == stage and not reply.has_error():
            alter(reply, rows_of(context))
        return reply
    return mod


def run_round(coordinator: Coordinator, weights) -> None:
    coordinator.setup()
    coordinator.share_keys()
    coordinator.collect(weights)
    coordinator.unmask()


def assert_blocked(node, replies: list[Message], kind: str) -> None:
    reasons = [r.error.reason for r in replies if r.has_error()]
    assert f"egress guard of bank {node.bank_id} blocked its {kind} reply" in reasons
    entries = node.bank.ledger.entries()
    assert kind in [e.body["message_kind"] for e in entries if e.kind == "blocked"]
    assert kind not in [e.body["message_kind"] for e in entries if e.kind == "egress"]
    assert not leaks(node.bank.train_features, replies)


@pytest.mark.parametrize("stuffing", SECAGG_STUFFING)
def test_rows_stuffed_into_a_secagg_reply_are_blocked(tmp_path, stuffing):
    stage, alter = SECAGG_STUFFING[stuffing]
    banks = make_banks(tmp_path, n=3)
    evil = ClientApp(client_fn=client_fn,
                     mods=[egress_guard_mod, on_stage(stage, alter), secure_aggregation_mod])
    coordinator = Coordinator(app, banks, apps={VICTIM: evil})
    run_round(coordinator, initial_weights(banks[0]))
    assert_blocked(banks[0], coordinator.replies, f"train/{stage}")


def recorder(seen: list[Message]):
    """A passive inner mod: keeps what Flower's SecAgg+ mod produced, changes nothing."""
    def mod(msg: Message, context: Context, call_next) -> Message:
        seen.append(call_next(msg, context))
        return seen[-1]
    return mod


def snapshot(reply: Message) -> dict:
    """A reply's whole content: every record's keys and values, arrays as bytes."""
    content = reply.content
    return {"configs": {k: dict(v) for k, v in content.config_records.items()},
            "metrics": {k: dict(v) for k, v in content.metric_records.items()},
            "arrays": {k: [a.data for a in v.values()] for k, v in content.array_records.items()}}


def blob_bytes(reply: Message) -> int:
    """Bytes of the SecAgg+ blobs of a reply, node ids counted as 8-byte integers."""
    total = 0
    for value in secagg(reply).values():
        for item in value if isinstance(value, list) else [value]:
            total += len(item) if isinstance(item, bytes) else 8
    return total


def test_an_honest_round_passes_byte_for_byte_and_every_blob_is_recorded(tmp_path):
    banks = make_banks(tmp_path, n=3)
    produced = {node.node_id: [] for node in banks}
    apps = {nid: ClientApp(client_fn=client_fn, mods=[egress_guard_mod, recorder(seen),
                                                      secure_aggregation_mod])
            for nid, seen in produced.items()}
    coordinator = Coordinator(app, banks, apps=apps)
    run_round(coordinator, initial_weights(banks[0]))
    assert not any(reply.has_error() for reply in coordinator.replies)
    for node in banks:
        sent = [r for r in coordinator.replies if r.metadata.src_node_id == node.node_id]
        assert [snapshot(r) for r in sent] == [snapshot(r) for r in produced[node.node_id]]
        egress = [e.body for e in node.bank.ledger.entries() if e.kind == "egress"]
        assert [b["message_kind"] for b in egress] == [
            "train/setup", "train/share_keys", "train/collect_masked_vectors", "train/unmask"]
        assert [b["total_bytes"] for b in egress] == [blob_bytes(r) for r in sent]
        assert all(b["total_bytes"] > 0 for b in egress)


def evaluate_message(node_id: int, weights) -> Message:
    content = compat.evaluateins_to_recorddict(
        EvaluateIns(ndarrays_to_parameters(weights), {"server-round": 1}), True)
    return Message(content=content, dst_node_id=node_id, message_type="evaluate", group_id="1")


def as_int(rows: np.ndarray) -> int:
    return int.from_bytes(rows.tobytes()[:7], "little")


def nan_with_payload(rows: np.ndarray) -> float:
    return struct.unpack("<d", rows.tobytes()[:6] + b"\xf8\x7f")[0]


def fit_metric(key: str, value):
    return lambda content, rows: content.config_records["fitres.metrics"].__setitem__(
        key, value(rows))


def eval_metric(key: str, value):
    return lambda content, rows: content.config_records["evaluateres.metrics"].__setitem__(
        key, value(rows))


PLAIN_STUFFING = {
    "fit_nan_metric": ("train", fit_metric("epsilon", lambda rows: float("nan"))),
    "fit_string_metric": ("train", fit_metric("n_train", lambda rows: ",".join(map(str, rows[0])))),
    "fit_extra_metric": ("train", fit_metric("row_0", lambda rows: float(rows[0, 0]))),
    "fit_dp_flag_as_number": ("train", fit_metric("dp", as_int)),
    "fit_status_code": ("train", lambda content, rows: content.config_records[
        "fitres.status"].__setitem__("code", as_int(rows))),
    "fit_num_examples": ("train", lambda content, rows: content.metric_records[
        "fitres.num_examples"].__setitem__("num_examples", as_int(rows))),
    "histogram_count_above_n_test": ("evaluate", eval_metric("hist_pos_000", as_int)),
    "grade_accuracy_out_of_range": ("evaluate", eval_metric("grade_acc_00",
                                                            lambda rows: float(as_int(rows)))),
    "auc_nan_with_payload": ("evaluate", eval_metric("auc", nan_with_payload)),
    "loss_not_finite": ("evaluate", lambda content, rows: content.metric_records[
        "evaluateres.loss"].__setitem__("loss", float("inf"))),
}


def rewrite(change):
    """An inner mod that changes the content of the bank's reply."""
    def mod(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        if not reply.has_error():
            change(reply.content, rows_of(context))
        return reply
    return mod


@pytest.mark.parametrize("stuffing", PLAIN_STUFFING)
def test_rows_stuffed_into_scalars_are_blocked(tmp_path, stuffing):
    kind, change = PLAIN_STUFFING[stuffing]
    [node] = make_banks(tmp_path, n=1, secure_aggregation=False, secure_aggregation_required=False)
    evil = ClientApp(client_fn=client_fn,
                     mods=[egress_guard_mod, rewrite(change), secure_aggregation_mod])
    weights = initial_weights(node)
    message = (train_message(node.node_id, fit_content(weights)) if kind == "train"
               else evaluate_message(node.node_id, weights))
    reply = evil(message, node.context)
    assert_blocked(node, [reply], kind)


@pytest.mark.parametrize("key", ["epsilon", "epsilon_lifetime", "steps"])
def test_a_fit_metric_the_ledger_contradicts_is_blocked(tmp_path, key):
    [node] = make_banks(tmp_path, n=1, dp=True, secure_aggregation=False,
                        secure_aggregation_required=False)

    def halve(content, rows):
        metrics = content.config_records["fitres.metrics"]
        metrics[key] = type(metrics[key])(metrics[key] / 2)

    evil = ClientApp(client_fn=client_fn,
                     mods=[egress_guard_mod, rewrite(halve), secure_aggregation_mod])
    reply = evil(train_message(node.node_id, fit_content(initial_weights(node))), node.context)
    assert_blocked(node, [reply], "train")
    spent = [e for e in node.bank.ledger.entries() if e.kind == "privacy_spend"]
    assert len(spent) == 1  # the round was charged before anything could leave


def test_the_honest_plain_replies_pass(tmp_path):
    [node] = make_banks(tmp_path, n=1, dp=True, secure_aggregation=False,
                        secure_aggregation_required=False)
    weights = initial_weights(node)
    messages = (train_message(node.node_id, fit_content(weights)),
                evaluate_message(node.node_id, weights))
    for message in messages:
        reply = app(message, node.context)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    kinds = [e.body["message_kind"] for e in node.bank.ledger.entries() if e.kind == "egress"]
    assert kinds == ["train", "evaluate"]
