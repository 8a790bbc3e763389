"""Aggregation on the coordinator: banks send updates, the strategy keeps global weights.

Banks send the round's update (local − global), not their full weights: under
SecAgg+ what is masked must be small, since masking clips every value to a fixed
range. :class:`UpdateAggregation` turns the (aggregated) updates back into
weights and hands them to a stock Flower strategy (FedAvg, FedProx, FedAdam), so
the server optimizer is Flower's and one code path serves with and without
secure aggregation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

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
from flwr.server.strategy import FedAdam, FedAvg, Strategy

from fedrisk.config import RunConfig


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
                 evaluation_rounds: Collection[int] | None = None) -> None:
        """Keep a factory for the wrapped strategy, observers of results, the initial model.

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

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The seeded initial model a bank sent when the run was proposed (no data involved)."""
        return self._initial

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """Remember the global weights this round starts from, then delegate."""
        self._current = parameters
        if self._strategy is None:
            self._strategy = self._make_strategy(parameters)
        return self._strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Add each (possibly securely aggregated) update to the global weights, then aggregate."""
        if self._on_fit is not None:
            self._on_fit(server_round, results, failures)
        current = parameters_to_ndarrays(self._current)
        as_weights = [
            (proxy, _with_parameters(res, [c + u for c, u in zip(
                current, parameters_to_ndarrays(res.parameters), strict=True)]))
            for proxy, res in results
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


def _with_parameters(res: FitRes, arrays: list) -> FitRes:
    return FitRes(status=res.status, parameters=ndarrays_to_parameters(arrays),
                  num_examples=res.num_examples, metrics=res.metrics)


def make_strategy(config: RunConfig, every_message: dict[str, Scalar] | None = None
                  ) -> Callable[[Parameters], Strategy]:
    """Factory of the configured Flower strategy, given the initial global weights.

    FedProx aggregates like FedAvg; its proximal term acts in each bank's local
    training. FedAdam treats the mean update as a pseudo-gradient with
    ``server-learning-rate``. ``every_message`` is added to every round's fit and
    evaluate config (each bank's last reported ledger head: a rolled-back bank refuses).
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
        return FedAvg(**common)

    return build


def _round_config(server_round: int) -> dict[str, Scalar]:
    return {"server-round": server_round}


def _no_metrics(_: list) -> dict[str, Scalar]:
    return {}
