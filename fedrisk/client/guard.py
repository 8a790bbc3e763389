"""The egress guard: a client mod that lets only the agreed protocol leave a bank.

It wraps everything else the bank runs (its SecAgg+ checks, Flower's SecAgg+ masking and
the bank client) and inspects each reply against :mod:`fedrisk.privacy.egress`, with what
the bank knows about itself: its model, its held-out size, its ledger (the DP spend of the
run) and its SecAgg+ state. Then it either records the message in the bank's signed ledger
(every array and SecAgg+ blob with its size and SHA-256) and sends it, stamped as a reply to
the request, or blocks it: the bank sends a fixed error reply (no attacker-chosen text),
logs why, records a ``blocked`` entry, and the round goes on without it. A
:class:`PolicyRefusal` raised inside becomes the bank's refusal (``refused: <key>``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
)

from fedrisk.client.bank import Bank, bank_for_context
from fedrisk.client.bank_client import model_spec_for
from fedrisk.client.refusal import BUDGET_KEY, ledger_refusal, message_round, refusal_reply
from fedrisk.client.secagg import protocol_state
from fedrisk.config import RunConfig
from fedrisk.models import build_model
from fedrisk.models.histograms import GRADE_ERROR_RANGE, HISTOGRAM_BINS
from fedrisk.privacy.accounting import PrivacyBudgetExceeded
from fedrisk.privacy.chain import LedgerUnwritable
from fedrisk.privacy.egress import EgressPolicy, inspect_metadata, inspect_reply
from fedrisk.privacy.ledger import egress_body
from fedrisk.privacy.policy import PolicyRefusal
from fedrisk.privacy.release import HELD_OUT
from fedrisk.privacy.secagg_replies import SecAggExchange

GRADE_ERROR_BINS = 2 * GRADE_ERROR_RANGE + 1
log = logging.getLogger("fedrisk.guard")


def egress_guard_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Inspect the bank's reply; record and send it, or block it with a fixed error.

    A ledger that cannot be written (a read-only or full disk) stops the message
    whatever stage fails to write: the bank refuses (``refused: ledger-write``) and
    nothing leaves.
    """
    try:
        config = RunConfig.from_run_config(dict(context.run_config))
        bank = bank_for_context(context)
    except Exception as error:  # noqa: BLE001 - bad data or config: refuse, say nothing more
        log.error("bank refuses to take part: %s", error)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             "bank failed (see the bank's log)"), reply_to=msg)
    run_id = config.ledger_run_id(context.run_id)
    try:
        return _guarded(msg, context, call_next, bank, config, run_id)
    except LedgerUnwritable as unwritable:
        return refusal_reply(msg, run_id, None, bank.bank_id, ledger_refusal(unwritable))


def _guarded(msg: Message, context: Context, call_next: ClientAppCallable, bank: Bank,
             config: RunConfig, run_id: str) -> Message:
    request = _secagg_request(msg)
    try:
        reply = call_next(msg, context)
    except PolicyRefusal as refusal:
        return refusal_reply(msg, run_id, bank.ledger, bank.bank_id, refusal)
    except LedgerUnwritable:
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes a sanitized reply
        return _failure_reply(msg, bank, run_id, error)
    if reply.has_error():
        return _failure_reply(msg, bank, run_id, RuntimeError(reply.error.reason))
    stage = None if request is None else str(request.get(Key.STAGE))
    kind = msg.metadata.message_type + (f"/{stage}" if stage else "")
    violations = _inspect(msg, reply, bank, config, run_id, context, request)
    if violations:
        log.error("egress guard blocked %s reply of bank %s: %s", kind, bank.bank_id,
                  "; ".join(violations))
        bank.ledger.append("blocked", {"run_id": run_id, "round": message_round(msg),
                                       "message_kind": kind, "violations": violations[:20]})
        return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION,
                             f"egress guard of bank {bank.bank_id} blocked its {kind} reply"),
                       reply_to=msg)
    outgoing = Message(reply.content, reply_to=msg)
    bank.ledger.append("egress", _egress_record(msg, outgoing, kind, bank, run_id, stage))
    return outgoing


def _inspect(msg: Message, reply: Message, bank: Bank, config: RunConfig, run_id: str,
             context: Context, request: dict | None) -> list[str]:
    """Every violation in ``reply``; a reply that cannot even be inspected is one."""
    try:
        exchange = None if request is None else SecAggExchange(
            str(request.get(Key.STAGE)), request, protocol_state(context))
        if exchange is not None and RECORD_KEY_STATE not in context.state.config_records:
            return ["no SecAgg+ state to check the reply against"]
        return (inspect_metadata(msg, reply)
                + inspect_reply(reply.content, msg.metadata.message_type,
                                _policy(bank, config, run_id), exchange))
    except Exception as error:  # noqa: BLE001 - what cannot be checked may not leave
        return [f"reply could not be inspected ({type(error).__name__})"]


def _policy(bank: Bank, config: RunConfig, run: str) -> EgressPolicy:
    spec = model_spec_for(bank, config)
    shapes = tuple(tuple(t.shape) for t in build_model(spec).state_dict().values())
    entries = bank.ledger.entries()
    spends = [e.body for e in entries
              if e.kind == "privacy_spend" and e.body.get("run_id") == run]
    releases = [e.body for e in entries if e.kind == "release_spend"
                and e.body.get("run_id") == run and e.body.get("population") == HELD_OUT]
    margin = math.ceil(8 * float(releases[-1]["noise_multiplier"])) + 1 if releases else 0
    bins = max(config.eval_bins, GRADE_ERROR_BINS) if config.dp else HISTOGRAM_BINS
    return EgressPolicy(bank.bank_id, shapes, bins, ledger_head=entries[-1].entry_hash,
                        ledger_entries=len(entries), ledger_id=bank.ledger.ledger_id,
                        n_grades=spec.n_grades, prior_default_rate=spec.prior_default_rate,
                        n_test=len(bank.test_labels), noise_margin=margin,
                        dp=config.record_level_dp,
                        spend=spends[-1] if spends else None)


def _secagg_request(msg: Message) -> dict | None:
    """A copy of a train request's SecAgg+ record, taken before Flower's mod consumes it."""
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return None
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None:
        return None
    return {key: list(value) if isinstance(value, list) else value
            for key, value in configs.items()}


def _failure_reply(msg: Message, bank: Bank, run_id: str, error: BaseException) -> Message:
    """Replace any failure by a fixed reason: exception text could carry data out.

    A budget the bank cannot pay (an evaluation release beyond ``eval-epsilon``, already
    recorded as a ``refusal``) is the bank's refusal: ``refused: privacy-budget``.
    """
    if isinstance(error, PrivacyBudgetExceeded) or "budget exhausted" in str(error):
        return refusal_reply(msg, run_id, bank.ledger, bank.bank_id,
                             PolicyRefusal(BUDGET_KEY, str(error), recorded=True))
    reason = "bank failed (see the bank's log)"
    log.error("bank %s: %s reply replaced by an error: %s", bank.bank_id,
              msg.metadata.message_type, error)
    bank.ledger.append("note", {"run_id": run_id, "round": message_round(msg),
                                "event": "error reply", "reason": reason})
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                         f"bank {bank.bank_id}: {reason}"), reply_to=msg)


def _egress_record(msg: Message, reply: Message, kind: str, bank: Bank, run_id: str,
                   stage: str | None) -> dict:
    """What the ledger keeps of a message that leaves: every array and blob, and the scalars.

    SecAgg+ blobs (public keys, ciphertexts, masked arrays, shares) are described as the
    exact bytes that leave, node ids as 8-byte integers; ``total_bytes`` counts them all.
    """
    content = reply.content
    arrays = {f"{name}[{i}]": array.numpy() for name, record in content.array_records.items()
              for i, array in enumerate(record.values())}
    secagg = content.config_records.get(RECORD_KEY_CONFIGS)
    if secagg is not None:
        arrays |= _blobs(secagg)
    metrics = {key: value for record in content.metric_records.values()
               for key, value in record.items()}
    for name in ("fitres.metrics", "evaluateres.metrics"):
        if name in content.config_records:
            metrics |= dict(content.config_records[name])
    return egress_body(run_id=run_id, round=message_round(msg), message_kind=kind,
                       arrays=arrays, metrics=metrics, epsilon=bank.ledger.last_epsilon(),
                       secure_aggregation=stage is not None)


def _blobs(record: ConfigRecord) -> dict[str, np.ndarray]:
    """Each bytes value of a SecAgg+ record as uint8, each list of node ids as uint64."""
    blobs = {}
    for key, value in record.items():
        items = value if isinstance(value, list) else [value]
        if all(isinstance(item, bytes) for item in items):
            blobs |= {f"{key}[{i}]": np.frombuffer(item, np.uint8) for i, item in enumerate(items)}
        else:
            blobs[key] = np.asarray(items, dtype=np.uint64)
    return blobs
