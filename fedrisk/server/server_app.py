"""fedrisk ServerApp: the coordinator. It aggregates updates and never reads a row."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid, ServerApp

from fedrisk.config import RunConfig
from fedrisk.server.run_record import RunRecorder
from fedrisk.server.strategy import UpdateAggregation, make_strategy

app = ServerApp()


def secure_aggregation_facts(config: RunConfig) -> dict[str, object]:
    """What metrics.json records about secure aggregation and its quantization."""
    return {
        "secure_aggregation": config.secure_aggregation,
        "secagg": {
            "protocol": "SecAgg+ (Flower)",
            "num_shares": config.secagg_num_shares,
            "reconstruction_threshold": config.secagg_reconstruction_threshold,
            "max_weight": config.secagg_max_weight,
            "clipping_range": config.secagg_clipping_range,
            "quantization_range": config.secagg_quantization_range,
        } if config.secure_aggregation else None,
    }


def fit_workflow(config: RunConfig) -> SecAggPlusWorkflow | None:
    """SecAgg+ when secure aggregation is on; ``None`` selects Flower's plain fit workflow."""
    if not config.secure_aggregation:
        return None
    return SecAggPlusWorkflow(
        num_shares=_count_or_fraction(config.secagg_num_shares),
        reconstruction_threshold=_count_or_fraction(config.secagg_reconstruction_threshold),
        max_weight=config.secagg_max_weight,
        clipping_range=config.secagg_clipping_range,
        quantization_range=config.secagg_quantization_range,
        timeout=config.secagg_timeout or None,
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured rounds of federated training and write the run's outputs."""
    config = RunConfig.from_run_config(dict(context.run_config))
    recorder = RunRecorder(config, context.run_id, secure_aggregation_facts(config))
    strategy = UpdateAggregation(make_strategy(config), recorder.on_fit, recorder.on_evaluate,
                                 evaluation_rounds=config.evaluation_rounds)
    legacy = LegacyContext(context=context, strategy=strategy,
                           config=ServerConfig(num_rounds=config.num_server_rounds))
    DefaultWorkflow(fit_workflow=fit_workflow(config))(grid, legacy)
    final = compat.arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD],
                                             keep_input=True)
    recorder.write(final, Path(config.output_dir))


def _count_or_fraction(value: float) -> int | float:
    """Flower reads an int as a count and a float ≤ 1 as a fraction of sampled banks."""
    return value if value <= 1 else int(value)
