"""Model files that cannot run code when loaded (safetensors, not pickle).

:func:`load_model` checks a file before anything is built from it: it must be a
safetensors file (a JSON header and raw float arrays) whose metadata declares a known
architecture with exactly the arrays it holds. Python pickles and ``torch.save``
archives can run code when loaded, so they are refused by their first bytes, and no
unpickler is ever called.

A consortium model also stores its PD calibration map (JSON metadata, two numbers and
their provenance), which :func:`load_model` applies: its PDs are calibrated as loaded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.numpy import load_file, save_file

from fedrisk.errors import UserError
from fedrisk.files import private_file
from fedrisk.models.calibration import PlattMap
from fedrisk.models.networks import ModelSpec, PDNetwork, build_model, set_model_arrays

SPEC_KEY = "fedrisk.model_spec"
CALIBRATION_KEY = "fedrisk.pd_calibration"
_PICKLE_PROTOCOL_OPCODE = 0x80
_ZIP_MAGIC = b"PK\x03\x04"
_HEADER_LENGTH_BYTES = 8
_FLOAT_DTYPES = ("F32", "F64")  # runs before float32 model files stored float64


class ModelFileError(UserError, ValueError):
    """A model file that is not a valid fedrisk safetensors model; nothing in it was run."""


def save_model(path: Path, spec: ModelSpec, arrays: dict, *, private: bool = False,
               calibration: PlattMap | None = None) -> None:
    """Write named float32 arrays and the spec (as safetensors metadata) to ``path``.

    ``private`` is for a model fitted to one party's rows and kept there (a bank's
    personalized model): the file is written 0600, missing folders 0700, atomically.
    ``calibration``: the PD calibration map :func:`load_model` applies to the PD logit.
    """
    metadata = {SPEC_KEY: json.dumps(spec.to_dict())}
    if calibration is not None:
        metadata[CALIBRATION_KEY] = json.dumps(calibration.to_dict())
    if not private:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(dict(arrays), str(path), metadata=metadata)
        return
    with private_file(path) as tmp:
        save_file(dict(arrays), str(tmp), metadata=metadata)


def load_model(path: str | Path) -> tuple[ModelSpec, PDNetwork]:
    """Load a model written by :func:`save_model`; no code in the file is ever executed.

    Checks, before building anything: the header is safetensors (a length and a
    JSON object), the spec in its metadata is valid JSON for a known architecture, and
    the file holds exactly that architecture's float arrays, shape for shape.

    Raises:
        ModelFileError: one line naming the file and what is wrong with it.

    """
    path = Path(path)
    _check_safetensors_header(path)
    try:
        spec, shapes, calibration = _declared_spec_and_shapes(path)
    except ModelFileError:
        raise
    except Exception as error:  # safetensors and JSON raise many types; one line each
        raise ModelFileError(f"{path}: not a valid fedrisk model file ({_first_line(error)})"
                             ) from None
    expected = _architecture_shapes(spec)
    if shapes != expected:
        raise ModelFileError(f"{path}: arrays do not match the declared {spec.kind} model "
                             f"(expected {_describe(expected)}, found {_describe(shapes)})")
    try:
        arrays = load_file(str(path))
        model = build_model(spec)
        set_model_arrays(model, [arrays[name] for name in model.state_dict()])
    except Exception as error:  # noqa: BLE001 - any failure here is a bad file, in one line
        raise ModelFileError(f"{path}: cannot load the model ({_first_line(error)})") from None
    model.calibration = calibration
    model.eval()
    return spec, model


def _check_safetensors_header(path: Path) -> None:
    """Refuse, without parsing more, a file that is not safetensors (naming pickles as such).

    A safetensors file is an 8-byte little-endian header length N, then N bytes of JSON
    starting with ``{``. Only a file without that layout is diagnosed further: a valid
    header length whose first byte happens to be 0x80 (N = 128, 384, 640, ...) is not a
    pickle's protocol opcode.
    """
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(_HEADER_LENGTH_BYTES)
        first = handle.read(1)
    if len(head) == _HEADER_LENGTH_BYTES and first == b"{" \
            and struct.unpack("<Q", head)[0] <= size - _HEADER_LENGTH_BYTES:
        return
    if head.startswith(_ZIP_MAGIC):
        raise ModelFileError(f"{path}: is a zip archive (torch.save pickle), not safetensors; "
                             "refused without loading it, pickles can run code")
    if head[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]):
        raise ModelFileError(f"{path}: is a Python pickle, not safetensors; refused "
                             "without loading it, pickles can run code")
    if len(head) < _HEADER_LENGTH_BYTES:
        raise ModelFileError(f"{path}: too short to be a safetensors model file")
    raise ModelFileError(f"{path}: not a safetensors file (no valid header); refused")


def _declared_spec_and_shapes(path: Path) -> tuple[ModelSpec, dict[str, tuple[int, ...]],
                                                    PlattMap | None]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if SPEC_KEY not in metadata:
            raise ModelFileError(f"{path}: safetensors file without a fedrisk model spec")
        spec = ModelSpec.from_dict(json.loads(metadata[SPEC_KEY]))
        calibration = (PlattMap.from_dict(json.loads(metadata[CALIBRATION_KEY]))
                       if CALIBRATION_KEY in metadata else None)
        shapes = {}
        for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
            array = handle.get_slice(name)
            if array.get_dtype() not in _FLOAT_DTYPES:
                raise ModelFileError(f"{path}: array '{name}' is {array.get_dtype()}, "
                                     "expected floats")
            shapes[name] = tuple(array.get_shape())
    return spec, shapes, calibration


def _architecture_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Array names and shapes of ``spec``'s network, without allocating its weights."""
    with torch.device("meta"):
        network = PDNetwork(spec)
    return {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in sorted(shapes.items()))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
