"""fedrisk ClientApp: one bank per SuperNode (deployment) or per partition (simulation)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.client import Client
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedrisk.client.bank import bank_for_context
from fedrisk.client.bank_client import BankClient
from fedrisk.client.guard import egress_guard_mod
from fedrisk.client.policy_mod import policy_mod
from fedrisk.config import RunConfig


def client_fn(context: Context) -> Client:
    """Build this node's bank client from its node config and the run config."""
    config = RunConfig.from_run_config(dict(context.run_config))
    return BankClient(bank_for_context(context), config, context.run_id).to_client()


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's SecAgg+ client protocol when the server drives it, else pass through.

    ``secaggplus_mod`` fails on plain fit messages, so it is engaged only for
    messages that carry SecAgg+ stage configs; with secure aggregation off the bank
    behaves exactly as without the mod.
    """
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


# The policy decides first; the guard then sees exactly what would leave, after masking.
app = ClientApp(client_fn=client_fn, mods=[policy_mod, egress_guard_mod, secure_aggregation_mod])
