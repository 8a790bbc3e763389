"""The bank's own checks on Flower's SecAgg+ protocol, in front of Flower's ``secaggplus_mod``.

Flower's SecAgg+ client does whatever the coordinator asks. A bank that trusts no
coordinator checks each SecAgg+ request against the protocol and against its own policy
(:mod:`fedrisk.privacy.policy`) before Flower's mod acts on it, and refuses with
:class:`PolicyRefusal` (the egress guard records it and replies ``refused: <key>``):

- ``setup``: a cohort (``sample_num``) below ``min-cohort``; a reconstruction threshold
  below ``min-secagg-threshold`` of the shares; parameters no honest server sends
  (``"secagg-protocol"``): not ``2 <= threshold <= share_num <= sample_num``, a modulus
  that is not a power of two in [2^16, 2^62] above the quantization range, a clipping
  range or maximum weight that is not finite and positive;
- ``share_keys``: fewer neighbours than ``min-cohort``, more than ``share_num``, or a
  list that does not show this bank's own public keys;
- ``collect_masked_vectors``: key shares forwarded from anything but exactly this bank's
  neighbours, each once. A bank masks its update with every bank it shared keys with;
  otherwise the coordinator could pick a few mask partners and declare them dropped;
- ``unmask``: a node listed twice or in both lists, a node this bank holds no shares of,
  this bank itself listed dropped (it sent its masked vector) or not listed active, more
  dropped nodes than ``share_num - threshold``, fewer active nodes than the threshold or
  ``min-cohort``;
- a plain train request (no SecAgg+) while the policy says ``secure-aggregation-required``.

A refused request ends the bank's SecAgg+ session: Flower's state (keys, shares) is
dropped, so the bank answers nothing more until a new ``setup``.

Why this bounds a coordinator that shows each bank different lists (split views).
Unmasking bank X takes X's self-mask seed (t shares, from holders that list X active) and
X's pairwise masks: X's own key (t shares, from holders that list X dropped) or the key of
every one of X's mask partners (t holders listing each of them dropped). A holder answers
one unmask per session and never names a node in both lists, so it releases at most one of
X's two shares: two disjoint groups of t among X's ``share_num`` holders exist only if
2t <= share_num, which ``min-secagg-threshold`` > 1/2 rules out. Stripping the partners
instead needs t listings for each of X's n - 1 partners (X masks with all of them, checked
at collect), (n - 1)·t in all, while each of the n holders lists at most n - t dropped:
(n - 1)·t > n·(n - t) whenever t > n/2. This counts a full SecAgg+ graph (every bank a
neighbour, as ``secagg-num-shares = 1.0`` asks and the default does up to 10 banks).

Above 10 banks the default neighbourhood is ``k = 2⌈log₂ n⌉ + 1`` banks (SecAgg+'s
sparse graph; ``fedrisk.server.secagg``), with ``t > k/2`` of them needed to rebuild a
secret. What still holds per bank: its two secrets are never both released (``t > k/2``,
whatever the graph); a round survives up to ``k - t`` dropouts in each neighbourhood; a
coordinator that follows the protocol learns one bank's update only with ``t`` of that
bank's ``k`` neighbours colluding. What no longer holds: the partner-stripping count,
since X's ``k - 1`` partners are now far fewer than the banks that can list them
dropped; so against a coordinator that shows banks different lists, record-level DP is
the guarantee above 10 banks (set ``secagg-num-shares = 1.0`` to keep the full graph).

What no check here can catch: Flower's SecAgg+ does not authenticate public keys. A
coordinator that substitutes its own keys for other banks' keys, or that registers
SuperNodes it controls (Sybils) as members of the cohort, holds the shares itself and
defeats SecAgg+. Each bank's DP-SGD is the guarantee that holds regardless.
"""

from __future__ import annotations

import math

from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)

from fedrisk.client.bank import bank_for_context
from fedrisk.privacy.policy import BankPolicy, PolicyRefusal

SECAGG_PROTOCOL = "secagg-protocol"  # refusal key: a request no honest SecAgg+ server sends
MIN_MOD_RANGE = 2**16  # Flower draws masks from [0, mod_range - 2]: only a wide range hides
MAX_MOD_RANGE = 2**62  # masked sums are int64


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Check a train request against the protocol and the bank's policy, then run SecAgg+.

    Messages with SecAgg+ stage configs go through :func:`check_request` and then
    Flower's ``secaggplus_mod``; a plain train message is refused when the bank's policy
    requires secure aggregation and passes through otherwise; other messages pass.

    Raises:
        PolicyRefusal: the request breaks the protocol or the policy (the bank's SecAgg+
            session is dropped first).

    """
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return call_next(msg, context)
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    policy = bank_for_context(context).policy
    if configs is None:
        if policy.secure_aggregation_required:
            raise PolicyRefusal("secure-aggregation-required",
                                "a plain train request: the update would leave unmasked")
        return call_next(msg, context)
    try:
        check_request(configs, protocol_state(context), policy)
    except PolicyRefusal:
        context.state.config_records[RECORD_KEY_STATE] = ConfigRecord()
        raise
    return secaggplus_mod(msg, context, call_next)


def protocol_state(context: Context) -> SecAggPlusState:
    """The bank's SecAgg+ state as Flower's mod keeps it (empty before the first setup)."""
    record = context.state.config_records.get(RECORD_KEY_STATE)
    return SecAggPlusState(**dict(record)) if record is not None else SecAggPlusState()


def check_request(configs: ConfigRecord, state: SecAggPlusState, policy: BankPolicy) -> None:
    """Raise :class:`PolicyRefusal` unless this SecAgg+ request is one the bank may answer.

    ``state`` is the bank's protocol state before the request.
    """
    checks = {Stage.SETUP: _check_setup, Stage.SHARE_KEYS: _check_share_keys,
              Stage.COLLECT_MASKED_VECTORS: _check_collect, Stage.UNMASK: _check_unmask}
    stage = configs.get(Key.STAGE)
    if stage not in checks:
        raise PolicyRefusal(SECAGG_PROTOCOL, f"unknown SecAgg+ stage {str(stage)[:40]!r}")
    checks[stage](configs, state, policy)


def _check_setup(configs: ConfigRecord, state: SecAggPlusState, policy: BankPolicy) -> None:
    n, k, t, target, modulus = (configs.get(key) for key in (
        Key.SAMPLE_NUMBER, Key.SHARE_NUMBER, Key.THRESHOLD, Key.TARGET_RANGE, Key.MOD_RANGE))
    clip, max_weight = configs.get(Key.CLIPPING_RANGE), configs.get(Key.MAX_WEIGHT)
    _require(all(_is_int(v) for v in (n, k, t, target, modulus))
             and all(type(v) is float for v in (clip, max_weight)),
             "setup: parameters missing or of the wrong type")
    _require(2 <= t <= k <= n, f"setup: threshold {t}, shares {k} and cohort {n} do not "
             "satisfy 2 <= threshold <= shares <= cohort")
    _require(MIN_MOD_RANGE <= modulus <= MAX_MOD_RANGE and modulus & (modulus - 1) == 0
             and 1 <= target < modulus, f"setup: modulus {modulus} with quantization range "
             f"{target} (a power of two in [2^16, 2^62] above the quantization range)")
    _require(all(math.isfinite(v) and v > 0 for v in (clip, max_weight)),
             "setup: clipping range and maximum weight must be finite and positive")
    if n < policy.min_cohort:
        raise PolicyRefusal("min-cohort", f"setup: a cohort of {n} banks < {policy.min_cohort}")
    if t / k < policy.min_secagg_threshold:
        raise PolicyRefusal("min-secagg-threshold", f"setup: threshold {t} of {k} shares "
                            f"< {policy.min_secagg_threshold:g}")


def _check_share_keys(configs: ConfigRecord, state: SecAggPlusState, policy: BankPolicy) -> None:
    shown = [key for key in configs if key != Key.STAGE]
    _require(all(key.isdigit() and str(int(key)) == key for key in shown),
             "share_keys: neighbours must be named by node id")
    _require(configs.get(str(state.nid)) == [state.pk1, state.pk2] and state.pk1 != b"",
             "share_keys: the list does not show this bank's own public keys")
    _require(len(shown) <= state.share_num,
             f"share_keys: {len(shown)} neighbours for {state.share_num} shares")
    if len(shown) < policy.min_cohort:
        raise PolicyRefusal("min-cohort", f"share_keys: {len(shown)} banks (this one included) "
                            f"< {policy.min_cohort}")


def _check_collect(configs: ConfigRecord, state: SecAggPlusState, policy: BankPolicy) -> None:
    sources, ciphertexts = configs.get(Key.SOURCE_LIST), configs.get(Key.CIPHERTEXT_LIST)
    _require(_int_list(sources) and isinstance(ciphertexts, list)
             and len(ciphertexts) == len(sources),
             "collect: sources and key shares missing or of different lengths")
    neighbours = set(state.public_keys_dict) - {state.nid}
    _require(len(set(sources)) == len(sources) and set(sources) == neighbours,
             f"collect: key shares forwarded from {len(set(sources))} distinct banks, not from "
             f"exactly this bank's {len(neighbours)} neighbours")


def _check_unmask(configs: ConfigRecord, state: SecAggPlusState, policy: BankPolicy) -> None:
    active, dead = configs.get(Key.ACTIVE_NODE_ID_LIST), configs.get(Key.DEAD_NODE_ID_LIST)
    _require(_int_list(active) and _int_list(dead), "unmask: node lists missing or not ids")
    _require(len(set(active)) == len(active) and len(set(dead)) == len(dead),
             "unmask: a node is listed twice")
    both = sorted(set(active) & set(dead))
    _require(not both, f"unmask: node(s) {both[:5]} listed both active and dropped: answering "
             "would hand over both shares that unmask them")
    _require(set(active) | set(dead) <= set(state.rd_seed_share_dict),
             "unmask: lists name nodes this bank holds no shares of")
    _require(state.nid in active, "unmask: this bank is not listed active although it sent "
             "its masked vector")
    _require(len(dead) <= state.share_num - state.threshold,
             f"unmask: {len(dead)} dropped > shares {state.share_num} - threshold "
             f"{state.threshold}")
    if len(active) < max(state.threshold, policy.min_cohort):
        raise PolicyRefusal("min-cohort", f"unmask: the sum would cover {len(active)} banks "
                            f"(threshold {state.threshold}, min-cohort {policy.min_cohort})")


def _require(condition: bool, detail: str) -> None:
    if not condition:
        raise PolicyRefusal(SECAGG_PROTOCOL, detail)


def _is_int(value: object) -> bool:
    return type(value) is int


def _int_list(value: object) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)
