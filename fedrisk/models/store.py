"""Model files that cannot run code when loaded (safetensors, not pickle)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.numpy import load_file, save_file

from fedrisk.models.networks import ModelSpec, PDNetwork, build_model, set_model_arrays

SPEC_KEY = "fedrisk.model_spec"


def save_model(path: Path, spec: ModelSpec, arrays: dict) -> None:
    """Write named float32 arrays and the spec (as safetensors metadata) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(arrays), str(path), metadata={SPEC_KEY: json.dumps(spec.to_dict())})


def load_model(path: Path) -> tuple[ModelSpec, PDNetwork]:
    """Load a model written by :func:`save_model`; no code in the file is ever executed."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        spec = ModelSpec.from_dict(json.loads(handle.metadata()[SPEC_KEY]))
    arrays = load_file(str(path))
    model = build_model(spec)
    names = list(model.state_dict())
    set_model_arrays(model, [arrays[name] for name in names])
    model.eval()
    return spec, model
