"""fedrisk ClientApp: one bank per SuperNode (deployment) or per partition (simulation)."""

from __future__ import annotations

from flwr.app import Context
from flwr.client import Client
from flwr.clientapp import ClientApp

from fedrisk.client.bank import bank_for_context
from fedrisk.client.bank_client import BankClient
from fedrisk.client.guard import egress_guard_mod
from fedrisk.client.institution import institution_clipping_mod
from fedrisk.client.policy_mod import policy_mod
from fedrisk.client.secagg import secure_aggregation_mod
from fedrisk.config import RunConfig


def client_fn(context: Context) -> Client:
    """Build this node's bank client from its node config and the run config."""
    config = RunConfig.from_run_config(dict(context.run_config))
    return BankClient(bank_for_context(context), config,
                      config.ledger_run_id(context.run_id)).to_client()


# The policy decides first; the guard then sees exactly what would leave, after masking;
# institution-level clipping acts on the update before SecAgg+ masks it.
app = ClientApp(client_fn=client_fn, mods=[policy_mod, egress_guard_mod, secure_aggregation_mod,
                                           institution_clipping_mod])
