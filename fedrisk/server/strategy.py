"""Aggregation on the coordinator: banks send updates, the strategy keeps global weights.

Banks send the round's update (local − global), not their full weights: under
SecAgg+ what is masked must be small, since masking clips every value to a fixed
range. :class:`UpdateAggregation` turns the (aggregated) updates back into
weights and hands them to a stock Flower strategy (FedAvg, FedProx, FedAdam), so
the server optimizer is Flower's and one code path serves with and without
secure aggregation. Without SecAgg+ the coordinator sees each bank's update and may
use Flower's robust FedMedian or FedTrimmedAvg: they act coordinate-wise on
``global + update_i``, the same as on the updates, since every bank starts from the
same global weights. Without SecAgg+ each update is first bounded to a multiple of the
round's median update norm (:func:`bound_update_norms`), so that one bank cannot drag
the average arbitrarily far by scaling its update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Strategy,
)

from fedrisk.config import RunConfig

log = logging.getLogger("fedrisk")
# What Flower's server optimizers carry from round to round (FedOpt: FedAdam, FedYogi, ...):
# the weights they step from and the moments. FedAvg, FedProx and the robust ones carry none.
STRATEGY_STATE = ("current_weights", "m_t", "v_t")


class UpdateAggregation(Strategy):
    """Wrap a Flower strategy so that clients may send updates instead of weights.

    Every update in ``aggregate_fit`` is added to the current global weights before
    the wrapped strategy aggregates; since every bank starts from the same global
    weights, the weighted mean of ``global + update_i`` equals ``global`` plus the
    weighted mean update, so FedAvg and the FedOpt family work unchanged. The
    wrapped strategy is built once the initial weights are known (FedAdam needs them).
    """

    def __init__(self, make_strategy: Callable[[Parameters], Strategy],
                 on_fit: Callable[[int, list, list], None] | None = None,
                 on_evaluate: Callable[[int, list, list], None] | None = None,
                 initial: Parameters | None = None,
                 evaluation_rounds: Collection[int] | None = None,
                 norm_bound: float = 0.0) -> None:
        """Keep a factory for the wrapped strategy, observers of results, the initial model.

        ``norm_bound``: when positive, each bank's update is scaled down to at most this
        multiple of the round's median update norm before aggregation. Only meaningful
        when each result is one bank's update (no SecAgg+: under SecAgg+ every result
        carries the same aggregate, so the server app passes 0).

        ``evaluation_rounds``: the rounds whose global model the banks evaluate (None:
        every round). Under DP each evaluation is an accounted release at every bank; in
        other rounds no evaluate message is sent and ``on_evaluate`` sees no results.
        """
        self._initial = initial
        self._evaluation_rounds = None if evaluation_rounds is None else set(evaluation_rounds)
        self._make_strategy = make_strategy
        self._strategy: Strategy | None = None
        self._current: Parameters | None = None
        self._on_fit = on_fit
        self._on_evaluate = on_evaluate
        self._norm_bound = norm_bound
        self._restored: dict[str, list[np.ndarray]] = {}

    def state(self) -> dict[str, list[np.ndarray]]:
        """The wrapped strategy's round-to-round state (:data:`STRATEGY_STATE`) to checkpoint."""
        if self._strategy is None:
            return dict(self._restored)
        return {name: [np.asarray(a) for a in getattr(self._strategy, name)]
                for name in STRATEGY_STATE if getattr(self._strategy, name, None)}

    def restore(self, state: dict[str, list[np.ndarray]], weights: Parameters) -> None:
        """Continue from a checkpoint's global ``weights`` and strategy ``state`` (resume).

        ``state`` goes to the wrapped strategy once it is built.
        """
        self._initial = weights
        self._restored = dict(state)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The seeded initial model a bank sent when the run was proposed (no data involved)."""
        return self._initial

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """Remember the global weights this round starts from, then delegate."""
        self._current = parameters
        if self._strategy is None:
            self._strategy = self._make_strategy(parameters)
            for name, arrays in self._restored.items():
                setattr(self._strategy, name, [np.array(a) for a in arrays])
        return self._strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Add each (possibly securely aggregated) update to the global weights, then aggregate."""
        if self._on_fit is not None:
            self._on_fit(server_round, results, failures)
        current = parameters_to_ndarrays(self._current)
        updates = [parameters_to_ndarrays(res.parameters) for _, res in results]
        if self._norm_bound > 0:
            updates = bound_update_norms(updates, self._norm_bound, server_round)
        as_weights = [
            (proxy, _with_parameters(res, [c + u for c, u in zip(current, update, strict=True)]))
            for (proxy, res), update in zip(results, updates, strict=True)
        ]
        return self._strategy.aggregate_fit(server_round, as_weights, failures)

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Delegate in evaluation rounds: every bank evaluates the new global model."""
        if self._evaluation_rounds is not None and server_round not in self._evaluation_rounds:
            if self._on_evaluate is not None:
                self._on_evaluate(server_round, [], [])
            return []
        return self._strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list) -> tuple[float | None, dict[str, Scalar]]:
        """Report banks' evaluation to the observer, then delegate."""
        if self._on_evaluate is not None:
            self._on_evaluate(server_round, results, failures)
        return self._strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        """No central evaluation: the coordinator holds no data."""
        return None


def bound_update_norms(updates: list[list[np.ndarray]], bound: float, server_round: int = 0
                       ) -> list[list[np.ndarray]]:
    """Scale each update down to L2 norm ``bound`` × the median norm of this round's updates.

    A robustness bound, not a privacy one: the median is set by the honest majority, so a
    bank that multiplies its update by 1000 contributes at most ``bound`` honest-sized
    updates. Honest updates pass unchanged when their norms are alike (within 1.4× of each
    other in the default 5-bank run); with banks of very different sizes some are bounded
    too (README, Poisoning). Direction is kept; a sign-flipped update is bounded, not
    removed.
    """
    norms = [float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in u)))
             for u in updates]
    limit = bound * float(np.median(norms)) if norms else 0.0
    bounded = []
    for update, norm in zip(updates, norms, strict=True):
        if limit > 0 and norm > limit:
            log.info("round %d: an update of norm %.3g bounded to %.3g (%g x median)",
                     server_round, norm, limit, bound)
            update = [a * np.asarray(limit / norm, dtype=a.dtype) for a in update]
        bounded.append(update)
    return bounded


def _with_parameters(res: FitRes, arrays: list) -> FitRes:
    return FitRes(status=res.status, parameters=ndarrays_to_parameters(arrays),
                  num_examples=res.num_examples, metrics=res.metrics)


def make_strategy(config: RunConfig, every_message: dict[str, Scalar] | None = None
                  ) -> Callable[[Parameters], Strategy]:
    """Factory of the configured Flower strategy, given the initial global weights.

    FedProx aggregates like FedAvg; its proximal term acts in each bank's local
    training. FedAdam treats the mean update as a pseudo-gradient with
    ``server-learning-rate``. FedMedian and FedTrimmedAvg (``trimmed-fraction``) take
    the coordinate-wise median or trimmed mean of the banks' models, unweighted: a bank
    cannot buy influence by claiming more examples. ``every_message`` is added to every
    round's fit and evaluate config (each bank's last reported ledger head: a rolled-back
    bank refuses).

    With institution-level DP the strategy is wrapped in Flower's
    ``DifferentialPrivacyClientSideFixedClipping``: it asks every bank to clip its update to
    ``institution-clipping-norm`` (the banks' ``fixedclipping_mod`` enforces it) and adds
    Gaussian noise of std ``institution-noise-multiplier × norm / min-banks`` to the
    aggregated model; a round with any failure is not aggregated (Flower's rule: fewer
    contributions than the noise was calibrated for).
    """
    extra = dict(every_message or {})
    common = {
        "fraction_fit": config.fraction_train,
        "fraction_evaluate": 1.0,
        "min_fit_clients": config.min_banks,
        "min_evaluate_clients": config.min_banks,
        "min_available_clients": config.min_banks,
        "on_fit_config_fn": lambda server_round: _round_config(server_round) | extra,
        "on_evaluate_config_fn": lambda server_round: _round_config(server_round) | extra | {
            "personalize": server_round == config.num_server_rounds
            and config.personalization != "none"},
        "accept_failures": True,
        # Per-bank metrics are recorded by the run recorder, not averaged away here.
        "fit_metrics_aggregation_fn": _no_metrics,
        "evaluate_metrics_aggregation_fn": _no_metrics,
    }

    def build(initial: Parameters) -> Strategy:
        if config.strategy == "fedadam":
            return FedAdam(initial_parameters=initial, eta=config.server_learning_rate, **common)
        if config.strategy == "fedmedian":
            return FedMedian(**common)
        if config.strategy == "fedtrimmedavg":
            return FedTrimmedAvg(beta=config.trimmed_fraction, **common)
        return FedAvg(**common)

    if not config.institution_level_dp:
        return build
    return lambda initial: DifferentialPrivacyClientSideFixedClipping(
        build(initial), config.institution_noise_multiplier, config.institution_clipping_norm,
        config.min_banks)


def _round_config(server_round: int) -> dict[str, Scalar]:
    return {"server-round": server_round}


def _no_metrics(_: list) -> dict[str, Scalar]:
    return {}
