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
"""

from __future__ import annotations

import math

from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from fedrisk.config import RunConfig


class DropoutSafeSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow; nodes lost before key sharing are not "dropped" later."""

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


def secagg_counts(config: RunConfig) -> tuple[int, int]:
    """``(num_shares, threshold)`` for a round that samples ``min-banks`` banks.

    Fractions (≤ 1) are read as Flower reads them, except that the threshold is rounded
    up and kept above half of the shares; values > 1 are absolute counts.
    """
    sampled = config.min_banks
    fraction = config.secagg_num_shares
    if fraction <= 1:
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
