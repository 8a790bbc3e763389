"""Torch modules over the contract encoding: PD networks and their (de)serialization."""

from fedrisk.models.networks import ModelSpec, build_model, model_arrays, set_model_arrays
from fedrisk.models.store import ModelFileError, load_model, save_model

__all__ = [
    "ModelFileError",
    "ModelSpec",
    "build_model",
    "load_model",
    "model_arrays",
    "save_model",
    "set_model_arrays",
]
