"""Only approved code runs at a bank: the app-bundle check of the bank's own executor.

A coordinator (curious, compromised, or anyone who reaches the SuperLink's port) can
submit any Flower app with ``flwr run``; without this check its ClientApp would run at
every bank with the bank's node config, free to read the bank's table and keys. The
ClientApp cannot check itself (an attacker's app would leave the check out), so the
bank's executor (:mod:`fedrisk.client.executor`, the bank's own installed fedrisk) checks
every task after pulling it and before installing or importing anything from its app
bundle (FAB):

- the bundle's SHA-256 is computed here, from the very bytes that will be installed
  (the SuperLink's own ``hash_str`` is not trusted);
- the bank's policy is read fresh from the node config's ``policy-path`` for every task;
  the hash must be in its ``approved-apps``. A missing node-config key, a missing or
  invalid policy file: no app is approved (fail closed);
- a refused task installs nothing, imports nothing from the bundle, trains and evaluates
  nothing; the bank records a signed ``refusal`` entry (policy key ``approved-apps``) and
  answers at once with the fixed text ``bank <id>: refused: approved-apps``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context, Message

from fedrisk.client.bank import resolve_source
from fedrisk.client.refusal import refusal_message, refusal_reply
from fedrisk.config import RunConfig
from fedrisk.data import Contract, read_table
from fedrisk.privacy.ledger import EgressLedger
from fedrisk.privacy.policy import BankPolicy, PolicyError, PolicyRefusal

APPROVAL_KEY = "approved-apps"
POLICY_PATH_KEY = "policy-path"
log = logging.getLogger("fedrisk.bank")


def bundle_digest(content: bytes) -> str:
    """SHA-256 hex digest of an app bundle's bytes: what ``approved-apps`` lists."""
    return hashlib.sha256(content).hexdigest()


def approval_refusal(digest: str, node_config: Mapping[str, object]) -> PolicyRefusal | None:
    """``None`` if the bank's policy approves the bundle ``digest``, else the refusal.

    ``node_config`` is the bank's own (its SuperNode's ``--node-config``), never the run's.
    """
    path = node_config.get(POLICY_PATH_KEY)
    if not path:
        return PolicyRefusal(APPROVAL_KEY, f"no {POLICY_PATH_KEY} in the node config, so no "
                                           f"bank policy approves app bundle {digest}")
    try:
        policy = BankPolicy.load(Path(str(path)))
    except PolicyError as error:
        return PolicyRefusal(APPROVAL_KEY, f"bank policy unusable ({error}), so no app is "
                                           f"approved; refused app bundle {digest}")
    if digest not in policy.approved_apps:
        return PolicyRefusal(APPROVAL_KEY, f"app bundle {digest} not approved by {path}")
    return None


def refuse_task(msg: Message, context: Context, refusal: PolicyRefusal) -> Message:
    """Record ``refusal`` in the bank's ledger and return the fixed-text reply to send.

    If the ledger cannot be opened (e.g. the node config is broken), the bank still
    refuses at once; why it could not record the refusal goes to its log.
    """
    node_config = dict(context.node_config)
    bank_id = str(node_config.get("bank-id", "unknown"))
    try:
        ledger, bank_id = open_bank_ledger(node_config)
    except Exception as error:  # noqa: BLE001 - the refusal must be sent whatever broke
        log.error("bank %s refuses run %s (%s) but cannot record it in its ledger: %s",
                  bank_id, context.run_id, refusal.detail, error)
        return refusal_message(msg, bank_id, refusal)
    return refusal_reply(msg, context.run_id, ledger, bank_id, refusal)


def open_bank_ledger(node_config: Mapping[str, object]) -> tuple[EgressLedger, str]:
    """The signed ledger of the bank named by its node config, and the bank's id.

    The ledger is keyed by the fingerprint of the bank's table, as when the bank trains;
    the run's config plays no part (it is the coordinator's proposal).
    """
    source = resolve_source(dict(node_config), RunConfig())
    contract = Contract.load(source.contract_path)
    fingerprint = contract.fingerprint(read_table(source.data_path))
    ledger = EgressLedger.for_bank(source.state_dir, source.bank_id, fingerprint,
                                   source.signing_key)
    return ledger, source.bank_id
