"""The egress guard: a client mod that lets only the agreed model update leave a bank.

It wraps everything else the bank runs (including SecAgg+ masking), inspects each
reply against :mod:`fedrisk.privacy.egress`, and either records the message in
the bank's signed ledger and lets it go, or blocks it: the bank then sends a
fixed error reply (no attacker-chosen text), logs why, and the round goes on
without it.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedrisk.client.bank import Bank, bank_for_context
from fedrisk.client.bank_client import model_spec_for
from fedrisk.config import RunConfig
from fedrisk.models import build_model
from fedrisk.models.metrics import HISTOGRAM_BINS
from fedrisk.privacy.accounting import PrivacyBudgetExceeded
from fedrisk.privacy.egress import EgressPolicy, inspect_reply
from fedrisk.privacy.ledger import egress_body

log = logging.getLogger("fedrisk.guard")


def egress_guard_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Inspect the bank's reply; record and pass it, or block it with a fixed error."""
    try:
        config = RunConfig.from_run_config(dict(context.run_config))
        bank = bank_for_context(context)
    except Exception as error:  # noqa: BLE001 - bad data or config: refuse, say nothing more
        log.error("bank refuses to take part: %s", error)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             "bank failed (see the bank's log)"), reply_to=msg)
    stage = _secagg_stage(msg)
    try:
        reply = call_next(msg, context)
    except Exception as error:  # noqa: BLE001 - every failure becomes a sanitized reply
        return _failure_reply(msg, bank, context, error)
    if reply.has_error():
        return _failure_reply(msg, bank, context, RuntimeError(reply.error.reason))
    policy = _policy(bank, config)
    violations = inspect_reply(reply.content, msg.metadata.message_type, stage, policy)
    kind = msg.metadata.message_type + (f"/{stage}" if stage else "")
    if violations:
        log.error("egress guard blocked %s reply of bank %s: %s", kind, bank.bank_id,
                  "; ".join(violations))
        bank.ledger.append("blocked", {"run_id": str(context.run_id), "round": _round(msg),
                                       "message_kind": kind, "violations": violations[:20]})
        return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION,
                             f"egress guard of bank {bank.bank_id} blocked its {kind} reply"),
                       reply_to=msg)
    bank.ledger.append("egress", _egress_record(msg, reply, kind, bank, context, stage))
    return reply


def _policy(bank: Bank, config: RunConfig) -> EgressPolicy:
    spec = model_spec_for(bank, config)
    shapes = tuple(tuple(t.shape) for t in build_model(spec).state_dict().values())
    return EgressPolicy(bank.bank_id, shapes, HISTOGRAM_BINS, ledger_head=bank.ledger.head_hash,
                        ledger_entries=bank.ledger.entry_count, ledger_id=bank.ledger.ledger_id,
                        n_grades=spec.n_grades, prior_default_rate=spec.prior_default_rate)


def _secagg_stage(msg: Message) -> str | None:
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
    return None if configs is None else str(configs.get(Key.STAGE))


def _round(msg: Message) -> int:
    return int(msg.metadata.group_id) if msg.metadata.group_id.isdigit() else 0


def _failure_reply(msg: Message, bank: Bank, context: Context, error: BaseException) -> Message:
    """Replace any failure by a fixed reason: exception text could carry data out."""
    refused = isinstance(error, PrivacyBudgetExceeded) or "budget exhausted" in str(error)
    reason = "privacy budget exhausted" if refused else "bank failed (see the bank's log)"
    log.error("bank %s: %s reply replaced by an error: %s", bank.bank_id,
              msg.metadata.message_type, error)
    bank.ledger.append("note", {"run_id": str(context.run_id), "round": _round(msg),
                                "event": "error reply", "reason": reason})
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                         f"bank {bank.bank_id}: {reason}"), reply_to=msg)


def _egress_record(msg: Message, reply: Message, kind: str, bank: Bank, context: Context,
                   stage: str | None) -> dict:
    """What the ledger keeps of a message that leaves: hashes and scalars, never values."""
    from flwr.common import bytes_to_ndarray

    content = reply.content
    arrays = {f"{name}[{i}]": array.numpy() for name, record in content.array_records.items()
              for i, array in enumerate(record.values())}
    secagg = content.config_records.get(RECORD_KEY_CONFIGS)
    if secagg is not None and Key.MASKED_PARAMETERS in secagg:
        arrays |= {f"masked[{i}]": bytes_to_ndarray(b)
                   for i, b in enumerate(secagg[Key.MASKED_PARAMETERS])}
    metrics = {}
    for name in ("fitres.metrics", "evaluateres.metrics"):
        if name in content.config_records:
            metrics = dict(content.config_records[name])
    return egress_body(run_id=str(context.run_id), round=_round(msg), message_kind=kind,
                       arrays=arrays, metrics=metrics, epsilon=bank.ledger.last_epsilon(),
                       secure_aggregation=stage is not None)
