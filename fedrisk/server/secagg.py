"""The coordinator's side of SecAgg+: Flower's workflow, with counts banks will accept.

Two things a bank checks (``fedrisk.client.secagg``) that Flower 1.41's server does not
guarantee on its own:

- the reconstruction threshold must be above half of the shares (otherwise a coordinator
  showing banks different dropout lists could collect both secrets of one bank). Flower
  rounds ``threshold × shares`` (4 shares at 0.6 gives 2, exactly half), so the counts are
  computed here, rounding the threshold up;
- a bank never holds shares of a node that dropped out before sharing its keys, so such
  a node must not be listed as dropped at unmasking. Flower lists every sampled node that
  is not active (and Flower's own client then fails on the missing share, so one early
  dropout fails the round); :class:`DropoutSafeSecAggPlus` counts as sampled only the
  nodes that completed key sharing, which is what the protocol means by "dropped".

Two settings follow the consortium by default:

- **neighbourhood** (``secagg-num-shares = 0``): every bank shares its secrets with (and
  masks against) every other bank up to :data:`FULL_GRAPH_BANKS` banks, and above that
  with a ring neighbourhood of ``2⌈log₂ n⌉ + 1`` banks (the "+" of SecAgg+): each bank's
  key agreements, shares and masks grow with log n instead of n. The threshold stays
  above half of each neighbourhood (:func:`secagg_counts`).
- **maximum weight** (``secagg-max-weight = 0``): each bank scales its update by
  ``num_examples / max_weight`` before quantizing, so ``max_weight`` must bound every
  bank's published size, and a loose bound wastes precision. The coordinator takes the
  power of two above the largest size banks have published so far in the run (exact
  or DP-noised, as each bank's policy says: never more than banks released), and
  :data:`FIRST_ROUND_MAX_WEIGHT` before any bank has published. ``fedrisk simulate``
  sets it from the tables instead (:func:`weight_bound`).
"""

from __future__ import annotations

import math

from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from fedrisk.config import RunConfig

FULL_GRAPH_BANKS = 10  # up to this many banks, every bank is every bank's neighbour
FIRST_ROUND_MAX_WEIGHT = float(2**20)  # before any size is published: banks up to ~1M rows

MIN_SECAGG_BANKS = 3  # with two banks, the sum reveals the other bank's update


class DropoutSafeSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow; nodes lost before key sharing are not "dropped" later.

    With ``follow_sizes``, each round's maximum weight is :func:`weight_bound` of the
    largest ``num_examples`` banks published in earlier rounds (the first round uses the
    ``max_weight`` given).
    """

    def __init__(self, *args: object, follow_sizes: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.follow_sizes = follow_sizes

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's setup; the nodes that answered it are the ones the protocol continues with."""
        proceed = super().setup_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return proceed

    def share_keys_stage(self, grid: Grid, context: LegacyContext,
                         state: WorkflowState) -> bool:
        """Flower's key sharing; only nodes whose shares others hold can be unmasked later."""
        proceed = super().share_keys_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return proceed

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext,
                                     state: WorkflowState) -> bool:
        """Flower's collection; the banks' published sizes set the next rounds' maximum weight.

        Flower 1.41 lists each error reply of this stage twice in ``state.failures`` (once
        while summing, once for the strategy); each is kept once, so a bank that dropped
        out counts as one failure in metrics.json.
        """
        before = len(state.failures)
        proceed = super().collect_masked_vectors_stage(grid, context, state)
        _drop_repeated_failures(state.failures, before)
        published = [fitres.num_examples for _, fitres in state.legacy_results]
        if self.follow_sizes and published:
            self.max_weight = max(self.max_weight, weight_bound(max(published)))
        return proceed


def _drop_repeated_failures(failures: list, start: int) -> None:
    """Remove the second copy of the failures added after ``start`` if they were listed twice."""
    added = failures[start:]
    half = len(added) // 2
    if added and len(added) % 2 == 0 and all(
            first.args == second.args for first, second in zip(added[:half], added[half:],
                                                               strict=True)):
        del failures[start + half:]


def weight_bound(size: float) -> float:
    """The power of two at or above ``size``: a maximum weight that bounds it within 2×.

    Privacy meaning: sent to every bank, it reveals only ⌈log₂⌉ of the largest size it
    bounds (a published size, or in a simulation the largest table).
    """
    return float(2 ** max(0, math.ceil(math.log2(max(size, 1.0)))))


def neighbourhood_size(banks: int) -> int:
    """Banks each bank shares secrets with, itself included: all, or ``2⌈log₂ n⌉ + 1``."""
    if banks <= FULL_GRAPH_BANKS:
        return banks
    return min(banks, 2 * math.ceil(math.log2(banks)) + 1)


def secagg_counts(config: RunConfig) -> tuple[int, int]:
    """``(num_shares, threshold)`` for a round that samples ``min-banks`` banks.

    ``secagg-num-shares`` 0 is :func:`neighbourhood_size`; other fractions (≤ 1) are read
    as Flower reads them; values > 1 are absolute counts. A fractional threshold is
    rounded up and kept above half of the shares.
    """
    sampled = config.min_banks
    fraction = config.secagg_num_shares
    if fraction == 0:
        shares = neighbourhood_size(sampled)
    elif fraction <= 1:
        shares = round(fraction * sampled)
        if shares < sampled and shares % 2 == 0:
            shares += 1
        shares = sampled if shares <= 2 else shares
    else:
        shares = int(fraction)
    threshold_setting = config.secagg_reconstruction_threshold
    if threshold_setting <= 1:
        threshold = max(math.ceil(threshold_setting * shares - 1e-9), shares // 2 + 1, 2)
    else:
        threshold = int(threshold_setting)
    return shares, threshold
