"""Probability-of-default networks for tabular credit data.

Every model maps a contract-encoded row (a float vector) to one logit of default.
No BatchNorm anywhere: batch statistics mix records across a batch, which breaks
per-sample gradient clipping and so DP-SGD.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fedrisk.models.calibration import PlattMap

MODEL_KINDS = ("mlp", "logistic")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: architecture, not weights.

    Attributes:
        kind: ``"mlp"`` (hidden layers with ReLU) or ``"logistic"`` (one linear
            layer: the regulator-friendly scorecard baseline).
        n_features: width of the contract encoding.
        hidden_units: sizes of the hidden layers (ignored for ``"logistic"``).
        prior_default_rate: public prior of default; the output bias starts at its
            log-odds, so training starts from the base rate instead of 50%.
        n_grades: number of ordinal risk grades of the contract's grade column; when
            positive, a second head on the shared body scores the grade (0 = best,
            1 = worst, an ordinal regression). 0: PD head only.

    """

    kind: str
    n_features: int
    hidden_units: tuple[int, ...] = (64,)
    prior_default_rate: float = 0.5
    n_grades: int = 0

    def __post_init__(self) -> None:
        """Reject unknown model kinds and non-positive sizes early."""
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model '{self.kind}'; choose one of {', '.join(MODEL_KINDS)}")
        if self.n_features < 1 or any(h < 1 for h in self.hidden_units):
            raise ValueError("model sizes must be positive")
        if not 0 < self.prior_default_rate < 1:
            raise ValueError("prior_default_rate must be between 0 and 1")
        if self.n_grades < 0 or self.n_grades == 1:
            raise ValueError("n_grades must be 0 (no grade head) or at least 2")

    def to_dict(self) -> dict:
        """Serialize to plain JSON types."""
        return {**asdict(self), "hidden_units": list(self.hidden_units)}

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """Rebuild from :meth:`to_dict` output."""
        return cls(data["kind"], int(data["n_features"]), tuple(data.get("hidden_units", ())),
                   float(data.get("prior_default_rate", 0.5)), int(data.get("n_grades", 0)))


class PDNetwork(nn.Module):
    """A feed-forward network returning the logit of default for each row.

    With ``spec.n_grades``, a grade head shares the body: one network, two heads,
    trained jointly, so the risk grade and the PD are consistent views of one
    representation.

    ``calibration`` (a :class:`~fedrisk.models.calibration.PlattMap`, None while training)
    maps the PD head's logit to a calibrated one; a consortium model file stores it
    (:func:`fedrisk.models.load_model` sets it), so its PDs are calibrated as loaded. It
    is a plain attribute, not a parameter: it is never trained and never aggregated.
    """

    def __init__(self, spec: ModelSpec) -> None:
        """Build layers from ``spec``."""
        super().__init__()
        self.spec = spec
        self.calibration: PlattMap | None = None
        widths = [spec.n_features] if spec.kind == "logistic" else [
            spec.n_features, *spec.hidden_units
        ]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], 1)
        self.grade_head = nn.Linear(widths[-1], 1) if spec.n_grades else None
        with torch.no_grad():
            rate = spec.prior_default_rate
            self.head.bias.fill_(float(np.log(rate / (1 - rate))))

    def forward(self, features: torch.Tensor, with_grade: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Return PD logits ``(batch,)``; with ``with_grade``, also grade scores ``(batch,)``.

        A grade score is the predicted position on the grade scale, 0 (best) to 1 (worst).
        """
        hidden = self.body(features)
        logits = self.head(hidden).squeeze(-1)
        if self.calibration is not None:
            logits = self.calibration.slope * logits + self.calibration.intercept
        if not with_grade:
            return logits
        return logits, self.grade_head(hidden).squeeze(-1)


def build_model(spec: ModelSpec, seed: int = 0) -> PDNetwork:
    """Build a freshly initialized model; the same seed gives the same weights everywhere."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = PDNetwork(spec)
    torch.random.set_rng_state(generator_state)
    return model


def model_arrays(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """Return the model's parameters as named float32 numpy arrays, in a stable order."""
    return OrderedDict(
        (name, tensor.detach().cpu().numpy().astype(np.float32, copy=True))
        for name, tensor in _plain_state_dict(model).items()
    )


def set_model_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load parameters given in the order of :func:`model_arrays`."""
    names = list(_plain_state_dict(model))
    if len(names) != len(arrays):
        raise ValueError(f"expected {len(names)} arrays, got {len(arrays)}")
    state = OrderedDict((n, torch.from_numpy(np.asarray(a, dtype=np.float32))) for n, a in zip(
        names, arrays, strict=True
    ))
    _unwrap(model).load_state_dict(state, strict=True)


def _unwrap(model: nn.Module) -> nn.Module:
    """Return the plain module inside an Opacus ``GradSampleModule`` wrapper, if any."""
    return getattr(model, "_module", model)


def _plain_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    return _unwrap(model).state_dict()
