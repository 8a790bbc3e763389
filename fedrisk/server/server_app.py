"""fedrisk ServerApp: the coordinator. It aggregates updates and never reads a row."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.common import (
    GetParametersIns,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.server.workflow.default_workflows import (
    default_evaluate_workflow,
    default_fit_workflow,
)
from flwr.serverapp import Grid, ServerApp

from fedrisk.config import RunConfig
from fedrisk.server.checkpoint import (
    Checkpoint,
    ResumableRounds,
    check_same_run,
    checkpoint_path,
    checkpointed_config,
    read_checkpoint,
    write_checkpoint,
)
from fedrisk.server.ledger_heads import known_heads_config, read_known_heads, record_heads
from fedrisk.server.run_record import RunRecorder
from fedrisk.server.secagg import (
    FIRST_ROUND_MAX_WEIGHT,
    MIN_SECAGG_BANKS,
    DropoutSafeSecAggPlus,
    secagg_counts,
)
from fedrisk.server.strategy import UpdateAggregation, make_strategy

app = ServerApp()
REFUSALS_FILE = "refusals.json"
BANKS_WAIT_SECONDS = 120.0


class RunRefused(RuntimeError):
    """No bank agreed to take part; the message lists what each bank answered."""


def secure_aggregation_facts(config: RunConfig) -> dict[str, object]:
    """What metrics.json records about secure aggregation and its quantization."""
    return {
        "secure_aggregation": config.secure_aggregation,
        "secagg": {
            "protocol": "SecAgg+ (Flower)",
            "num_shares": config.secagg_num_shares,
            "reconstruction_threshold": config.secagg_reconstruction_threshold,
            "shares_per_bank": secagg_counts(config)[0],
            "threshold_shares": secagg_counts(config)[1],
            "max_weight": config.secagg_max_weight or FIRST_ROUND_MAX_WEIGHT,
            "max_weight_follows_sizes": config.secagg_max_weight == 0,
            "clipping_range": config.secagg_clipping_range,
            "quantization_range": config.secagg_quantization_range,
        } if config.secure_aggregation else None,
    }


def fit_workflow(config: RunConfig) -> DropoutSafeSecAggPlus | None:
    """SecAgg+ when secure aggregation is on; ``None`` selects Flower's plain fit workflow."""
    if not config.secure_aggregation:
        return None
    num_shares, threshold = secagg_counts(config)
    return DropoutSafeSecAggPlus(
        num_shares=num_shares, reconstruction_threshold=threshold,
        max_weight=config.secagg_max_weight or FIRST_ROUND_MAX_WEIGHT,
        follow_sizes=config.secagg_max_weight == 0,
        clipping_range=config.secagg_clipping_range,
        quantization_range=config.secagg_quantization_range,
        timeout=config.secagg_timeout or None,
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured rounds of federated training and write the run's outputs.

    After every round the run is checkpointed in ``output-dir``; with ``resume`` it
    continues the checkpointed run (same ledger run id, same config) at its next round.
    """
    config = RunConfig.from_run_config(dict(context.run_config))
    run_id = config.ledger_run_id(context.run_id)
    output = Path(config.output_dir)
    resumed = _resume_point(config, run_id, output)
    recorder = RunRecorder(config, run_id, secure_aggregation_facts(config))
    # Each bank gets back the ledger head it last reported with every message: a bank
    # whose ledger was rolled back (or deleted with its anchor) refuses.
    known = known_heads_config(read_known_heads(config.ledger_heads_file))
    initial = initial_parameters(grid, config, known)  # the proposal: banks may refuse
    strategy = UpdateAggregation(make_strategy(config, known), recorder.on_fit,
                                 recorder.on_evaluate, initial,
                                 evaluation_rounds=config.evaluation_rounds,
                                 norm_bound=0.0 if config.secure_aggregation
                                 else config.update_norm_bound)
    secagg = fit_workflow(config)
    if resumed is not None:
        recorder.restore(resumed.record, resumed.round, context.run_id)
        strategy.restore(resumed.strategy, ndarrays_to_parameters(resumed.weights))
        if secagg is not None and resumed.secagg_max_weight:
            secagg.max_weight = resumed.secagg_max_weight
    rounds = ResumableRounds(secagg or default_fit_workflow, default_evaluate_workflow,
                             resumed.round if resumed is not None else 0,
                             RoundCheckpoint(config, run_id, recorder, strategy, secagg))
    legacy = LegacyContext(context=context, strategy=strategy,
                           config=ServerConfig(num_rounds=config.num_server_rounds))
    DefaultWorkflow(fit_workflow=rounds.fit, evaluate_workflow=rounds.evaluate)(grid, legacy)
    final = compat.arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD],
                                             keep_input=True)
    recorder.write(final, output)
    record_heads(config.ledger_heads_file, recorder.banks, run_id)


class RoundCheckpoint:
    """After each round: the run's checkpoint and the coordinator's record of ledger heads."""

    def __init__(self, config: RunConfig, run_id: str, recorder: RunRecorder,
                 strategy: UpdateAggregation, secagg: DropoutSafeSecAggPlus | None) -> None:
        """Checkpoint what these hold into the run config's ``output-dir``."""
        self.config = config
        self.run_id = run_id
        self.recorder = recorder
        self.strategy = strategy
        self.secagg = secagg

    def __call__(self, server_round: int, legacy: LegacyContext) -> None:
        """Write the checkpoint of ``server_round`` (atomically), then the ledger heads."""
        weights = compat.arrayrecord_to_parameters(
            legacy.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        write_checkpoint(self.config.output_dir, Checkpoint(
            self.run_id, server_round, checkpointed_config(self.config),
            parameters_to_ndarrays(weights), self.strategy.state(), self.recorder.state(),
            self.secagg.max_weight if self.secagg is not None else None))
        record_heads(self.config.ledger_heads_file, self.recorder.banks, self.run_id)


def _resume_point(config: RunConfig, run_id: str, output: Path) -> Checkpoint | None:
    """The checkpoint to continue from (``resume``), checked to be this very run; else None.

    A fresh run starts from round 1 and replaces any checkpoint left in ``output``.
    """
    if not config.resume:
        return None
    checkpoint = read_checkpoint(output)
    check_same_run(checkpoint, config, run_id, checkpoint_path(output))
    return checkpoint


def initial_parameters(grid: Grid, config: RunConfig, known_heads: dict[str, str]
                       ) -> Parameters:
    """Propose the run to every bank; the first bank that accepts sends the seeded initial model.

    This is each bank's first message of the run: a bank checks the proposal against its
    own policy here and refuses at once (``refused: <policy key>``). When every bank
    refuses, or too few accept for secure aggregation (3), the run stops with
    :class:`RunRefused` listing the refusals (also written to ``output-dir/refusals.json``),
    instead of training nothing for every round.
    """
    nodes = _wait_for_banks(grid, config.min_banks)
    content = compat.getparametersins_to_recorddict(GetParametersIns(dict(known_heads)))
    replies = grid.send_and_receive([
        Message(content=content.copy(), dst_node_id=node, message_type=(
            MessageTypeLegacy.GET_PARAMETERS), group_id="0") for node in nodes])
    accepted, answers = [], []
    for reply in replies:
        if reply.has_content() and reply.content.array_records:
            accepted.append(reply)
        else:
            answers.append(reply.error.reason if reply.has_error() else "no initial model")
    answers.sort()
    needed = MIN_SECAGG_BANKS if config.secure_aggregation else 1
    if len(accepted) >= needed:
        return compat.arrayrecord_to_parameters(
            next(iter(accepted[0].content.array_records.values())), keep_input=True)
    summary = ("no bank accepted the run" if not accepted else
               f"only {len(accepted)} of {len(replies)} banks accepted the run (secure "
               f"aggregation needs at least {needed})")
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / REFUSALS_FILE).write_text(json.dumps({"answers": answers, "summary": summary},
                                                   indent=2))
    raise RunRefused(f"{summary}: " + "; ".join(answers))


def _wait_for_banks(grid: Grid, minimum: int) -> list[int]:
    deadline = time.monotonic() + BANKS_WAIT_SECONDS
    while len(nodes := list(grid.get_node_ids())) < minimum and time.monotonic() < deadline:
        time.sleep(1.0)
    return nodes


