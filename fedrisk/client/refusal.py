"""How a bank says no: a signed ``refusal`` entry in its ledger and a fixed-text error reply.

Every refusal (a run outside the bank's policy, an unapproved app bundle, a SecAgg+
request that would expose the bank's update) takes this one path. The coordinator
learns ``bank <id>: refused: <policy key>`` at once and nothing else; the detail
(what exactly was wrong) stays in the bank's log and its ledger.
"""

from __future__ import annotations

import logging

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

from fedrisk.privacy.chain import LedgerError, LedgerRollback
from fedrisk.privacy.ledger import EgressLedger
from fedrisk.privacy.policy import PolicyRefusal

log = logging.getLogger("fedrisk.bank")
# The keys of refusals that no policy line decides: the run's budget is spent (by the
# bank's own ledger), the ledger was rolled back, or the ledger cannot be written.
BUDGET_KEY = "privacy-budget"
ROLLBACK_KEY = "ledger-rollback"
UNWRITABLE_KEY = "ledger-write"


def ledger_refusal(error: LedgerError) -> PolicyRefusal:
    """The refusal of a bank whose ledger cannot be used: rolled back, or not writable.

    Either way nothing may leave: a rolled-back ledger would undercount ε, and a spend
    that cannot be written first cannot be charged. The detail (path, OS error) stays in
    the bank's log.
    """
    key = ROLLBACK_KEY if isinstance(error, LedgerRollback) else UNWRITABLE_KEY
    return PolicyRefusal(key, str(error))


def message_round(msg: Message) -> int:
    """The server round a message belongs to (its group id), 0 when it has none."""
    group = msg.metadata.group_id
    return int(group) if group.isdigit() else 0


def refusal_reply(msg: Message, run_id: int | str, ledger: EgressLedger | None, bank_id: str,
                  refusal: PolicyRefusal) -> Message:
    """Record ``refusal`` in the bank's ledger and return the fixed-text error reply to send.

    ``ledger`` is None only when the ledger itself cannot be used (rolled back, or not
    writable): the refusal then goes to the bank's log alone. A refusal already
    ``recorded`` where the bank decided it gets no second entry.
    """
    if ledger is not None and not refusal.recorded:
        ledger.append("refusal", {
            "run_id": str(run_id), "round": message_round(msg),
            "message_kind": msg.metadata.message_type, "policy_key": refusal.key,
            "reason": refusal.detail or str(refusal),
        })
    log.warning("bank %s refuses a %s message of run %s: %s (%s)", bank_id,
                msg.metadata.message_type, run_id, refusal.key, refusal.detail)
    return refusal_message(msg, bank_id, refusal)


def refusal_message(msg: Message, bank_id: str, refusal: PolicyRefusal) -> Message:
    """The error reply of a refusal: ``bank <id>: refused: <key>`` and nothing else."""
    return Message(Error(ErrorCode.MOD_FAILED_PRECONDITION, f"bank {bank_id}: {refusal}"),
                   reply_to=msg)
