"""A finished run directory, opened for scoring: its contract, its model and its split.

Layout read here (written by ``fedrisk simulate --output-dir RUN``): ``RUN/model.safetensors``,
``RUN/data/contract.toml`` and ``RUN/metrics.json`` (``config.seed`` and
``config.test-fraction`` locate each bank's held-out split).

The model file is loaded by :func:`fedrisk.models.load_model`, which checks it before
anything is built from it (safetensors only, never a pickle; see there).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedrisk.data import Contract, DataError
from fedrisk.data.errors import first_line
from fedrisk.models import ModelFileError, ModelSpec, load_model
from fedrisk.models.networks import PDNetwork

MODEL_FILE = "model.safetensors"
CONTRACT_FILE = Path("data") / "contract.toml"
METRICS_FILE = "metrics.json"



@dataclass(frozen=True)
class Run:
    """What scoring needs from a finished run.

    Attributes:
        directory: the run directory.
        contract: the consortium's contract (``data/contract.toml``).
        spec: the model's architecture.
        model: the PD network, in eval mode.
        model_sha256: SHA-256 of the model file (binds calibrators to this model).
        seed: the run's ``seed`` (None if ``metrics.json`` is absent).
        test_fraction: the run's ``test-fraction`` (None if ``metrics.json`` is absent).

    """

    directory: Path
    contract: Contract
    spec: ModelSpec
    model: PDNetwork
    model_sha256: str
    seed: int | None
    test_fraction: float | None

    def logits(self, features: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
        """Model logits of encoded rows (float32 in), scored in batches, as float64."""
        parts = []
        with torch.inference_mode():
            for start in range(0, len(features), batch_size):
                batch = torch.from_numpy(features[start:start + batch_size])
                parts.append(self.model(batch).numpy().astype(np.float64))
        return np.concatenate(parts) if parts else np.zeros(0)

    def grade_head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The model's grade scores (0 best … 1 worst on the contract's grade scale), if any."""
        if not self.model.spec.n_grades:
            return None
        return lambda features: self.model(features, with_grade=True)[1]


def load_run(run_dir: str | Path) -> Run:
    """Open a run directory: contract, model (safetensors only) and split settings.

    Raises:
        DataError: the directory, contract or ``metrics.json`` is missing or invalid.
        ModelFileError: the model file is missing, is a pickle, or does not match the contract.

    """
    directory = Path(run_dir)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a run directory (expected the --output-dir of "
                        "fedrisk simulate)")
    contract = Contract.load(directory / CONTRACT_FILE)
    model_path = directory / MODEL_FILE
    spec, model = load_model(model_path)
    if spec.n_features != contract.n_features:
        raise ModelFileError(f"{model_path}: the model reads {spec.n_features} inputs but the "
                             f"contract encodes {contract.n_features}")
    seed, test_fraction = _split_settings(directory / METRICS_FILE)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    return Run(directory, contract, spec, model, digest, seed, test_fraction)


def _split_settings(path: Path) -> tuple[int | None, float | None]:
    if not path.exists():
        return None, None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))["config"]
        return int(config["seed"]), float(config["test-fraction"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: cannot read the run's seed and test-fraction "
                        f"({first_line(error)})") from None

