"""A poisoning bank, for simulations only: fedrisk's ClientApp with one bank's update rewritten.

The attacker is one bank of the consortium that trains honestly and then multiplies the
update it sends (local − global) by a factor: ×10 or ×1000 (scaling, to drag the model
far along its own direction) or ×−1 or ×−10 (sign flip, to undo the others' progress).
It rewrites the update where its own training code would, *before* Flower's
``secaggplus_mod`` quantizes and masks it, so under SecAgg+ its update goes through the
protocol like everyone's: each value is scaled by ``num_examples / max_weight`` and
clipped to ± ``secagg-clipping-range`` by Flower's quantizer. (A bank that also rewrote
Flower's masking code could add any value modulo the field to the sum; see the README,
"Poisoning".)

fedrisk's shipped ClientApp has no switch for this: a study builds
:func:`poisoning_bank_app` and passes it as ``SimulationRequest.bank_app``.
"""

from __future__ import annotations

from functools import partial

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fedrisk.client.bank import bank_for_context
from fedrisk.client.client_app import client_fn
from fedrisk.client.guard import egress_guard_mod
from fedrisk.client.policy_mod import policy_mod
from fedrisk.client.secagg import secure_aggregation_mod


def poison_mod(msg: Message, context: Context, call_next: ClientAppCallable, *,
               bank_id: str, factor: float) -> Message:
    """Multiply the update of bank ``bank_id``'s train replies by ``factor``; others pass."""
    reply = call_next(msg, context)
    if (msg.metadata.message_type != MessageType.TRAIN or reply.has_error()
            or bank_for_context(context).bank_id != bank_id):
        return reply
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    fitres.parameters = ndarrays_to_parameters(
        [factor * update for update in parameters_to_ndarrays(fitres.parameters)])
    reply.content = compat.fitres_to_recorddict(fitres, keep_input=True)
    return reply


def poisoning_bank_app(bank_id: str, factor: float) -> ClientApp:
    """fedrisk's ClientApp in which bank ``bank_id`` sends ``factor`` × its honest update.

    The poisoning mod is innermost, after the bank's SecAgg+ mod: what it rewrites is
    what SecAgg+ then quantizes and masks (or, without SecAgg+, what the coordinator reads).
    """
    return ClientApp(client_fn=client_fn, mods=[
        policy_mod, egress_guard_mod, secure_aggregation_mod,  # as fedrisk.client.client_app
        partial(poison_mod, bank_id=bank_id, factor=factor)])
