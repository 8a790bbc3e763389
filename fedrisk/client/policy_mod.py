"""The bank's policy, enforced before anything else runs: the outermost ClientApp mod.

Every message of a run passes here first. The bank loads its own policy (never the
coordinator's word), checks the proposed run config against it and, once per run,
checks the whole planned run against the lifetime cap on its table. A run outside the
policy is refused at its first message with :func:`~fedrisk.client.refusal.refusal_reply`:
a ``refusal`` entry in the bank's signed ledger naming the policy key, and the reply
``refused: <key>``, sent at once; nothing is trained or evaluated.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from fedrisk.client.bank import bank_for_context
from fedrisk.client.bank_client import BankClient
from fedrisk.client.refusal import refusal_reply
from fedrisk.config import RunConfig
from fedrisk.privacy.accounting import PrivacyBudgetExceeded
from fedrisk.privacy.policy import PolicyRefusal

log = logging.getLogger("fedrisk.bank")
ADMITTED = "fedrisk.admitted"  # context.state record: this run passed the policy


def policy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Refuse the message if its run breaks the bank's policy; otherwise pass it on."""
    try:
        config = RunConfig.from_run_config(dict(context.run_config))
        bank = bank_for_context(context)
    except Exception as error:  # noqa: BLE001 - bad data, config or policy: fail closed
        log.error("bank refuses to take part: %s", error)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             "bank failed (see the bank's log)"), reply_to=msg)
    client = BankClient(bank, config, context.run_id)
    try:
        bank.policy.check_run(config, bank.n_train)  # cheap: every message
        if ADMITTED not in context.state.config_records:
            client.admit()  # plans the run once: the lifetime cap over all of it
            context.state.config_records[ADMITTED] = ConfigRecord({"run": str(context.run_id)})
    except PolicyRefusal as refusal:
        return refusal_reply(msg, context.run_id, bank.ledger, bank.bank_id, refusal)
    except PrivacyBudgetExceeded as exhausted:
        refusal = PolicyRefusal("privacy-budget", str(exhausted))
        return refusal_reply(msg, context.run_id, bank.ledger, bank.bank_id, refusal)
    return call_next(msg, context)
