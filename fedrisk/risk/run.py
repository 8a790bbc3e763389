"""A finished run directory, opened for scoring: its contract, its model and its split.

Layout read here (written by ``fedrisk simulate --output-dir RUN``): ``RUN/model.safetensors``,
``RUN/data/contract.toml`` and ``RUN/metrics.json`` (``config.seed`` and
``config.test-fraction`` locate each bank's held-out split).

The model file is checked before anything is built from it: it must be a safetensors
file (a JSON header and raw float32 arrays), never a pickle. Python pickles and
``torch.save`` archives can run code when loaded, so they are refused by their first
bytes, and no unpickler is ever called.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedrisk.data import Contract, DataError
from fedrisk.data.errors import first_line
from fedrisk.models import ModelSpec, load_model
from fedrisk.models.networks import PDNetwork
from fedrisk.models.store import SPEC_KEY

MODEL_FILE = "model.safetensors"
CONTRACT_FILE = Path("data") / "contract.toml"
METRICS_FILE = "metrics.json"

_PICKLE_PROTOCOL_OPCODE = 0x80
_ZIP_MAGIC = b"PK\x03\x04"
_HEADER_LENGTH_BYTES = 8
_FLOAT_DTYPES = ("F32", "F64")  # simulations save aggregated weights as float64


class ModelFileError(DataError):
    """A model file that is not a valid fedrisk safetensors model; nothing in it was run."""


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
    spec, model = load_model_file(model_path)
    if spec.n_features != contract.n_features:
        raise ModelFileError(f"{model_path}: the model reads {spec.n_features} inputs but the "
                             f"contract encodes {contract.n_features}")
    seed, test_fraction = _split_settings(directory / METRICS_FILE)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    return Run(directory, contract, spec, model, digest, seed, test_fraction)


def load_model_file(path: str | Path) -> tuple[ModelSpec, PDNetwork]:
    """Load a fedrisk model after checking that the file is safetensors, not a pickle.

    Checks, before building anything: the header is safetensors (a length and a
    JSON object), the spec in its metadata is valid JSON for a known architecture, and
    the file holds exactly that architecture's float arrays, shape for shape.

    Raises:
        ModelFileError: one line naming the file and what is wrong with it.

    """
    path = Path(path)
    _check_safetensors_header(path)
    try:
        spec, shapes = _declared_spec_and_shapes(path)
    except ModelFileError:
        raise
    except Exception as error:  # safetensors and JSON raise many types; one line each
        raise ModelFileError(f"{path}: not a valid fedrisk model file ({first_line(error)})"
                             ) from None
    expected = _architecture_shapes(spec)
    if shapes != expected:
        raise ModelFileError(f"{path}: arrays do not match the declared {spec.kind} model "
                             f"(expected {_describe(expected)}, found {_describe(shapes)})")
    try:
        return load_model(path)
    except Exception as error:
        raise ModelFileError(f"{path}: cannot load the model ({first_line(error)})") from None


def _check_safetensors_header(path: Path) -> None:
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(_HEADER_LENGTH_BYTES)
        if head.startswith(_ZIP_MAGIC):
            raise ModelFileError(f"{path}: is a zip archive (torch.save pickle), not safetensors; "
                                 "refused without loading it, pickles can run code")
        if head[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]):
            raise ModelFileError(f"{path}: is a Python pickle, not safetensors; refused "
                                 "without loading it, pickles can run code")
        if len(head) < _HEADER_LENGTH_BYTES:
            raise ModelFileError(f"{path}: too short to be a safetensors model file")
        (header_length,) = struct.unpack("<Q", head)
        if header_length > size - _HEADER_LENGTH_BYTES or handle.read(1) != b"{":
            raise ModelFileError(f"{path}: not a safetensors file (no valid header); refused")


def _declared_spec_and_shapes(path: Path) -> tuple[ModelSpec, dict[str, tuple[int, ...]]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if SPEC_KEY not in metadata:
            raise ModelFileError(f"{path}: safetensors file without a fedrisk model spec")
        spec = ModelSpec.from_dict(json.loads(metadata[SPEC_KEY]))
        shapes = {}
        for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
            array = handle.get_slice(name)
            if array.get_dtype() not in _FLOAT_DTYPES:
                raise ModelFileError(f"{path}: array '{name}' is {array.get_dtype()}, "
                                     "expected floats")
            shapes[name] = tuple(array.get_shape())
    return spec, shapes


def _architecture_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Array names and shapes of ``spec``'s network, without allocating its weights."""
    with torch.device("meta"):
        network = PDNetwork(spec)
    return {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in sorted(shapes.items()))


def _split_settings(path: Path) -> tuple[int | None, float | None]:
    if not path.exists():
        return None, None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))["config"]
        return int(config["seed"]), float(config["test-fraction"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: cannot read the run's seed and test-fraction "
                        f"({first_line(error)})") from None

