"""Feature attributions of a PD network with Captum (plain torch, no data or privacy logic).

Attributions are computed on the model's logit (log-odds of default), so for
Integrated Gradients they add up to ``logit(x) - logit(baseline)`` (completeness):
a positive attribution is a feature pushing this applicant's risk *above* the
baseline applicant's. Encoded columns named ``column=category`` (one-hot slots)
are summed back into their source column, so reasons name what a person gave,
not an encoding slot.

Shared by the audit (global attributions, adverse-action reasons) and applicant
scoring: the inputs are encoded rows, the outputs plain numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import nn


@dataclass(frozen=True)
class Attributions:
    """Per-row, per-column contributions to the logit of default.

    Attributes:
        columns: source column names, in order of first appearance in the encoding.
        values: array ``(n_rows, n_columns)``; positive means "raises the PD".
        convergence_delta: largest ``|sum(values) - (logit(x) - logit(baseline))|``
            over the rows, Captum's check that the path integral converged.

    """

    columns: list[str]
    values: np.ndarray
    convergence_delta: float


def integrated_gradients(model: nn.Module, features: np.ndarray, baseline: np.ndarray,
                         n_steps: int = 32) -> tuple[np.ndarray, float]:
    """Integrated Gradients of the logit for each encoded column.

    Args:
        model: maps ``(batch, n_features)`` float tensors to logits ``(batch,)``.
        features: encoded rows, ``(n_rows, n_features)``.
        baseline: one encoded reference row, ``(n_features,)`` (e.g. the average applicant).
        n_steps: Riemann steps of the path integral.

    Returns:
        ``(n_rows, n_features)`` attributions and the largest completeness error.

    """
    model.eval()
    inputs = torch.as_tensor(np.asarray(features, dtype=np.float32))
    reference = torch.as_tensor(np.asarray(baseline, dtype=np.float32)).expand_as(inputs)
    explainer = IntegratedGradients(model)
    values, delta = explainer.attribute(inputs, baselines=reference, n_steps=n_steps,
                                        return_convergence_delta=True)
    error = float(delta.abs().max()) if len(delta) else 0.0
    return values.detach().numpy().astype(np.float64), error


def column_groups(feature_names: Sequence[str]) -> dict[str, list[int]]:
    """Map each source column to its encoded positions (``name=slot`` slots share ``name``)."""
    groups: dict[str, list[int]] = {}
    for position, name in enumerate(feature_names):
        groups.setdefault(name.split("=", 1)[0], []).append(position)
    return groups


def explain_rows(model: nn.Module, features: np.ndarray, baseline: np.ndarray,
                 feature_names: Sequence[str], n_steps: int = 32) -> Attributions:
    """Integrated Gradients summed per source column (one-hot slots folded together)."""
    values, delta = integrated_gradients(model, features, baseline, n_steps)
    groups = column_groups(feature_names)
    folded = np.column_stack([values[:, idx].sum(axis=1) for idx in groups.values()]) if len(
        groups) else np.zeros((len(features), 0))
    return Attributions(list(groups), folded, delta)


def top_reasons(row: np.ndarray, columns: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` columns that raised this row's PD most (positive contributions only)."""
    order = np.argsort(-row)
    return [(columns[i], float(row[i])) for i in order[:k] if row[i] > 0]
