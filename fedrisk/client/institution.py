"""Institution-level DP at the bank: Flower's client-side fixed clipping of the round update.

With ``dp-level = "institution"`` or ``"both"``, each bank's whole contribution to a round
(its update) is clipped to L2 norm ``institution-clipping-norm`` before it is masked and
sent, and the coordinator adds Gaussian noise to the aggregate (Flower's
``DifferentialPrivacyClientSideFixedClipping`` and ``fixedclipping_mod``). The clipping
is the bank's half of the guarantee and runs here, at the bank; the noise is the
coordinator's half, so the institution-level ε holds only if the coordinator adds it.

Flower's legacy ``flwr.client.mod.fixedclipping_mod`` is used as it is: it works under
SecAgg+ (it reads the fit instructions out of a message that also carries
``secaggplus_configs``, where the Message-API ``flwr.clientapp.mod.fixedclipping_mod``
refuses a message with two config records). It clips ``reply − request`` weights, while a
fedrisk bank replies with its update (local − global), so :func:`institution_clipping_mod`
presents the update to it as weights (global + update, in float64, so that subtracting
the global weights again is exact to float32) and turns its answer back into an update.

The bank also refuses a clipping norm other than the run config's (the one its policy
accepted with the run), checks the norm of what leaves, and records the clipping in its
signed ledger (norm before and after, the bound, the hash of the clipped update).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import ndarray_to_bytes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedrisk.client.bank import bank_for_context
from fedrisk.client.refusal import message_round
from fedrisk.config import RunConfig
from fedrisk.privacy.policy import PolicyRefusal

FITINS_PARAMETERS = "fitins.parameters"
NORM_TOLERANCE = 1e-5  # float32 rounding of a clipped update, relative to the bound


def institution_clipping_mod(msg: Message, context: Context,
                             call_next: ClientAppCallable) -> Message:
    """Clip this bank's round update with Flower's ``fixedclipping_mod``; record it.

    Passes every message through unchanged unless the run asks for institution-level DP
    and the message is a training request carrying the global model (under SecAgg+, the
    collect stage).
    """
    if (msg.metadata.message_type != MessageType.TRAIN
            or FITINS_PARAMETERS not in msg.content.array_records):
        return call_next(msg, context)
    config = RunConfig.from_run_config(dict(context.run_config))
    if not config.institution_level_dp:
        return call_next(msg, context)
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    requested = fit_ins.config.get(KEY_CLIPPING_NORM)
    if not isinstance(requested, float) or not math.isclose(
            requested, config.institution_clipping_norm):
        raise PolicyRefusal("dp-levels", f"clipping norm {requested!r} is not the run's "
                            f"institution-clipping-norm {config.institution_clipping_norm:g}")
    global_weights = parameters_to_ndarrays(fit_ins.parameters)
    norms: dict[str, float] = {}

    def update_as_weights(request: Message, ctxt: Context) -> Message:
        reply = call_next(request, ctxt)
        if reply.has_error():
            return reply
        fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        update = parameters_to_ndarrays(fit_res.parameters)
        norms["before"] = _norm(update)
        fit_res.parameters = ndarrays_to_parameters(
            [g.astype(np.float64) + u for g, u in zip(global_weights, update, strict=True)])
        reply.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
        return reply

    reply = fixedclipping_mod(msg, context, update_as_weights)
    if reply.has_error():
        return reply
    fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    clipped = [(w - g).astype(np.float32) for w, g in zip(
        parameters_to_ndarrays(fit_res.parameters), global_weights, strict=True)]
    after = _norm(clipped)
    if after > config.institution_clipping_norm * (1 + NORM_TOLERANCE):
        raise RuntimeError(f"clipped update has norm {after:.6g} above the bound "
                           f"{config.institution_clipping_norm:g}")
    ledger = bank_for_context(context).ledger
    ledger.append("note", {
        "run_id": str(context.run_id), "round": message_round(msg), "event": "update clipped",
        "dp_level": config.dp_level, "clipping_norm": config.institution_clipping_norm,
        "norm_before": norms["before"], "norm_after": after,
        "noise_multiplier_promised": config.institution_noise_multiplier,
        "update_sha256": hashlib.sha256(b"".join(map(ndarray_to_bytes, clipped))).hexdigest(),
    })
    fit_res.parameters = ndarrays_to_parameters(clipped)
    fit_res.metrics["ledger_head"] = ledger.head_hash  # the reply reports the head after it
    reply.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    return reply


def _norm(arrays: list[np.ndarray]) -> float:
    return float(math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))
