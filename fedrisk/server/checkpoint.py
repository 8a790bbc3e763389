"""Checkpoint and resume on the coordinator: what a run needs to go on after a crash.

After every round the ServerApp writes ``output-dir/checkpoint.safetensors``: the
global weights, the strategy's state (FedAdam's moments and weights; FedAvg, FedProx,
FedMedian and FedTrimmedAvg carry none) and, in the safetensors metadata, the run's
ledger run id, the last completed round, the run config and the run record (every
round's metrics, every bank's reports). One file, written to a temporary file beside
it, fsynced and renamed (:func:`fedrisk.files.private_file`): a crash leaves the
previous round's checkpoint or this one, never half of one. Loading it never runs code
(safetensors: a JSON header and raw arrays).

A resumed run (run config ``resume = true``, ``run-id`` = the checkpoint's) continues
at the round after the checkpoint with the same config. Nothing here is trusted by a
bank: each bank plans the rest of the run from its own ledger (see
:mod:`fedrisk.client.bank_client`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.server import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.serverapp import Grid
from safetensors.numpy import load_file, save_file

from fedrisk.config import RESUME_KEYS, RunConfig
from fedrisk.errors import UserError
from fedrisk.files import private_file

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "fedrisk-checkpoint/1"
_METADATA_KEY = "fedrisk.checkpoint"
_WEIGHTS = "weights"
_STRATEGY = "strategy"

Workflow = Callable[[Grid, LegacyContext], None]


class CheckpointError(UserError, ValueError):
    """No usable checkpoint to resume from, or a resume that would change the run; one line."""


@dataclass
class Checkpoint:
    """A run as it stood after its last completed round.

    Attributes:
        run_id: the run's id in the banks' ledgers (a resumed run keeps it).
        round: the last completed round (its weights are :attr:`weights`).
        config: the run config, without the keys a resume sets (``RESUME_KEYS``).
        weights: the global model after :attr:`round`, as the strategy holds it.
        strategy: the strategy's named array lists (e.g. FedAdam's ``m_t``, ``v_t``).
        record: the run record so far (:meth:`fedrisk.server.run_record.RunRecorder.state`).
        secagg_max_weight: SecAgg+'s maximum weight when it follows the banks' sizes.

    """

    run_id: str
    round: int
    config: dict
    weights: list[np.ndarray]
    strategy: dict[str, list[np.ndarray]] = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    secagg_max_weight: float | None = None

    @property
    def num_rounds(self) -> int:
        """The rounds the run was configured for."""
        return int(self.config["num-server-rounds"])


def checkpoint_path(output_dir: str | Path) -> Path:
    """Where a run's checkpoint lives: ``output-dir/checkpoint.safetensors``."""
    return Path(output_dir) / CHECKPOINT_FILE


def write_checkpoint(output_dir: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically (temporary file, fsync, rename, fsync of the folder)."""
    arrays = {f"{_WEIGHTS}.{i}": np.ascontiguousarray(a) for i, a in enumerate(checkpoint.weights)}
    for name, values in checkpoint.strategy.items():
        arrays |= {f"{_STRATEGY}.{name}.{i}": np.ascontiguousarray(a)
                   for i, a in enumerate(values)}
    document = {"format": FORMAT, "run_id": checkpoint.run_id, "round": checkpoint.round,
                "config": checkpoint.config, "record": checkpoint.record,
                "strategy": sorted(checkpoint.strategy),
                "secagg_max_weight": checkpoint.secagg_max_weight}
    path = checkpoint_path(output_dir)
    with private_file(path) as tmp:
        save_file(arrays, str(tmp), metadata={_METADATA_KEY: json.dumps(document)})
    return path


def read_checkpoint(output_dir: str | Path) -> Checkpoint:
    """The checkpoint in ``output_dir``; :class:`CheckpointError` (one line) if none is usable."""
    path = checkpoint_path(output_dir)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from (a run writes one after "
                              "each completed round)")
    try:
        document, arrays = _read(path)
        weights = _array_list(arrays, _WEIGHTS)
        strategy = {name: _array_list(arrays, f"{_STRATEGY}.{name}")
                    for name in document["strategy"]}
        checkpoint = Checkpoint(str(document["run_id"]), int(document["round"]),
                                dict(document["config"]), weights, strategy,
                                dict(document["record"]), document.get("secagg_max_weight"))
        RunConfig.from_run_config(checkpoint.config)
    except Exception as error:  # noqa: BLE001 - safetensors, JSON and config raise many types
        raise CheckpointError(f"{path}: not a usable fedrisk checkpoint "
                              f"({_first_line(error)})") from None
    if not weights or not 0 <= checkpoint.round <= checkpoint.num_rounds:
        raise CheckpointError(f"{path}: not a usable fedrisk checkpoint (round "
                              f"{checkpoint.round} of {checkpoint.num_rounds}, "
                              f"{len(weights)} weight arrays)")
    return checkpoint


def checkpointed_config(config: RunConfig) -> dict:
    """The run config as a checkpoint keeps it: without the keys a resume sets."""
    return {k: v for k, v in config.to_run_config().items() if k not in RESUME_KEYS}


def check_same_run(checkpoint: Checkpoint, config: RunConfig, run_id: str, where: Path) -> None:
    """Refuse a resume whose run id or run config differs from the checkpointed run's."""
    if run_id != checkpoint.run_id:
        raise CheckpointError(f"{where}: the checkpoint is of run {checkpoint.run_id}, not "
                              f"{run_id}")
    given = checkpointed_config(config)
    changed = sorted(k for k in given.keys() | checkpoint.config.keys()
                     if given.get(k) != checkpoint.config.get(k))
    if changed:
        key = changed[0]
        raise CheckpointError(
            f"{where}: a resumed run keeps its config, but '{key}' is "
            f"{given.get(key)!r} here and {checkpoint.config.get(key)!r} in the checkpoint"
            + (f" (and {len(changed) - 1} more keys)" if len(changed) > 1 else ""))


class ResumableRounds:
    """Flower's fit and evaluate workflows that skip completed rounds and checkpoint each new one.

    Flower's ``DefaultWorkflow`` always counts rounds from 1; given these two workflows
    it sends nothing for rounds up to ``completed`` (their weights are the checkpoint's)
    and calls ``after_round`` once each later round is evaluated (or skipped by
    ``eval-every``), which is when the run record has closed it.
    """

    def __init__(self, fit: Workflow, evaluate: Workflow, completed: int,
                 after_round: Callable[[int, LegacyContext], None]) -> None:
        """Wrap ``fit`` and ``evaluate``; rounds up to ``completed`` are already done."""
        self._fit = fit
        self._evaluate = evaluate
        self.completed = completed
        self._after_round = after_round

    def fit(self, grid: Grid, context: LegacyContext) -> None:
        """Run the round's fit workflow unless the round is already done."""
        if _current_round(context) > self.completed:
            self._fit(grid, context)

    def evaluate(self, grid: Grid, context: LegacyContext) -> None:
        """Run the round's evaluate workflow, then checkpoint, unless the round is done."""
        server_round = _current_round(context)
        if server_round > self.completed:
            self._evaluate(grid, context)
            self._after_round(server_round, context)
            self.completed = server_round


def _current_round(context: LegacyContext) -> int:
    return int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
    document = json.loads(metadata[_METADATA_KEY])
    if document.get("format") != FORMAT:
        raise ValueError(f"format {document.get('format')!r}, expected {FORMAT!r}")
    return document, load_file(str(path))


def _array_list(arrays: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    count = sum(1 for name in arrays if name.rsplit(".", 1)[0] == prefix)
    return [arrays[f"{prefix}.{i}"] for i in range(count)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
