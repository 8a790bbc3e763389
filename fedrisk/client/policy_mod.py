"""The bank's policy, enforced before anything else runs: the outermost ClientApp mod.

Every message of a run passes here first. The bank loads its own policy (never the
coordinator's word), checks the proposed run config against it and, once per run,
checks the whole planned run against the lifetime cap on its table. A run outside the
policy is refused at its first message with :func:`~fedrisk.client.refusal.refusal_reply`:
a ``refusal`` entry in the bank's signed ledger naming the policy key, and the reply
``refused: <key>``, sent at once; nothing is trained or evaluated. A bank whose own
table fails the contract (or cannot be read) replies ``its table fails the contract:``
and the check's public text (the check and the contract column, never a value from the
rows); it has no ledger to write to until its table is usable.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from fedrisk.client.bank import Bank, bank_for_context, resolve_source
from fedrisk.client.bank_client import BankClient
from fedrisk.client.refusal import (
    BUDGET_KEY,
    ledger_refusal,
    refusal_message,
    refusal_reply,
)
from fedrisk.config import RunConfig
from fedrisk.data import TableRefused
from fedrisk.privacy.accounting import PrivacyBudgetExceeded
from fedrisk.privacy.chain import LedgerRollback, LedgerUnwritable
from fedrisk.privacy.ledger import known_head_key, parse_known_head
from fedrisk.privacy.policy import PolicyRefusal

log = logging.getLogger("fedrisk.bank")
ADMITTED = "fedrisk.admitted"  # context.state record: this run passed the policy
TABLE_REFUSED = "its table fails the contract"


def policy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Refuse the message if its run breaks the bank's policy; otherwise pass it on."""
    run_id: int | str = context.run_id
    try:
        config = RunConfig.from_run_config(dict(context.run_config))
        run_id = config.ledger_run_id(context.run_id)
        bank = bank_for_context(context)
        _check_known_head(msg, bank)
    except (LedgerRollback, LedgerUnwritable) as unusable:  # log it, write nothing
        bank_id = resolve_source(dict(context.node_config), config).bank_id
        return refusal_reply(msg, run_id, None, bank_id, ledger_refusal(unusable))
    except TableRefused as refused:  # the check's public text: which check, which column
        bank_id = resolve_source(dict(context.node_config), config).bank_id
        log.error("bank refuses to take part: %s", refused)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             f"bank {bank_id}: {TABLE_REFUSED}: {refused.public}"), reply_to=msg)
    except Exception as error:  # noqa: BLE001 - bad data, config or policy: fail closed
        log.error("bank refuses to take part: %s", error)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             "bank failed (see the bank's log)"), reply_to=msg)
    client = BankClient(bank, config, run_id)
    try:
        bank.policy.check_run(config, bank.n_train)  # cheap: every message
        if ADMITTED not in context.state.config_records:
            client.admit()  # plans the run once: the lifetime cap over all of it
            context.state.config_records[ADMITTED] = ConfigRecord({"run": run_id})
    except PolicyRefusal as refusal:
        return _refuse(msg, run_id, bank, refusal)
    except PrivacyBudgetExceeded as exhausted:
        return _refuse(msg, run_id, bank, PolicyRefusal(BUDGET_KEY, str(exhausted)))
    except LedgerUnwritable as unwritable:
        return refusal_reply(msg, run_id, None, bank.bank_id, ledger_refusal(unwritable))
    return call_next(msg, context)


def _refuse(msg: Message, run_id: str, bank: Bank, refusal: PolicyRefusal) -> Message:
    """The refusal reply, recorded in the ledger when the ledger can still be written."""
    try:
        return refusal_reply(msg, run_id, bank.ledger, bank.bank_id, refusal)
    except LedgerUnwritable as unwritable:
        log.error("bank %s cannot record its refusal: %s", bank.bank_id, unwritable)
        return refusal_message(msg, bank.bank_id, refusal)


def _check_known_head(msg: Message, bank: Bank) -> None:
    """Refuse if the ledger lacks the head this bank last reported to the coordinator."""
    key = known_head_key(bank.bank_id, bank.ledger.ledger_id)
    for record in msg.content.config_records.values() if msg.has_content() else ():
        if key in record:
            bank.ledger.check_known_head(*parse_known_head(record[key]))
