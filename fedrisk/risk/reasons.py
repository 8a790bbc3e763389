"""Reasons for a score, in plain words, from DeepLift attributions (captum).

Each applicant's logit is attributed to the encoded inputs with captum's
``DeepLift`` against a reference applicant: the encoded contract center (every
numeric input at its ``center``, every categorical input spread evenly over its
known categories). DeepLift's attributions sum exactly to ``logit(applicant) -
logit(reference)``. Attributions of a categorical column's one-hot slots are added
up, so every reason names one source column. The reasons are the columns with the
largest attributions in absolute value, worded with the applicant's own value and
direction, e.g. ``"high int_rate (23.1) raises risk"`` or ``"term = term_60 raises risk"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from captum.attr import DeepLift

from fedrisk.data import UNKNOWN_CATEGORY, Contract
from fedrisk.data.values import to_float
from fedrisk.models.networks import PDNetwork

_LARGE_VALUE = 100.0  # values at least this large print without decimals


def reference_encoding(contract: Contract) -> np.ndarray:
    """The encoded contract center: numeric inputs at center, categories evenly weighted."""
    parts = [np.zeros(len(contract.numeric_inputs))]
    for feature in contract.categorical_inputs:
        known = len(feature.categories)
        parts.append(np.r_[np.full(known, 1.0 / known if known else 0.0), 0.0, 0.0])
    return np.concatenate(parts).astype(np.float32)


def column_attributions(
    model: PDNetwork, contract: Contract, features: np.ndarray, batch_size: int
) -> np.ndarray:
    """DeepLift attribution of each row's logit to each input column (rows x columns).

    Columns follow ``contract.input_columns``; each row sums to its logit minus the
    reference logit.
    """
    reference = torch.from_numpy(reference_encoding(contract)).unsqueeze(0)
    explainer = DeepLift(model)
    slots = torch.from_numpy(_slot_columns(contract))
    parts = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*hooks and attributes on non-linear.*")
        for start in range(0, len(features), batch_size):
            batch = torch.from_numpy(features[start:start + batch_size]).requires_grad_()
            attributions = explainer.attribute(batch, baselines=reference)
            parts.append((attributions.detach() @ slots).numpy())
    if not parts:
        return np.zeros((0, len(contract.input_columns)))
    return np.concatenate(parts).astype(np.float64)


def top_reasons(
    contract: Contract, rows: pd.DataFrame, attributions: np.ndarray, n_reasons: int
) -> list[np.ndarray]:
    """The ``n_reasons`` strongest reasons of each row, in words, strongest first.

    Args:
        contract: the run's contract.
        rows: the scored rows (raw values, as in the table).
        attributions: :func:`column_attributions` of these rows.
        n_reasons: how many reasons per row (at most the number of input columns).

    Returns:
        One object array of phrases per rank.

    """
    columns = contract.input_columns
    ranked = np.argsort(-np.abs(attributions), axis=1, kind="stable")[:, :n_reasons]
    phrases = [_column_phrases(contract, rows, name) for name in columns]
    reasons = []
    for rank in range(ranked.shape[1]):
        words = np.empty(len(rows), dtype=object)
        for index, describe in enumerate(phrases):
            chosen = np.flatnonzero(ranked[:, rank] == index)
            if chosen.size:
                effect = attributions[chosen, index]
                words[chosen] = [f"{what} {_direction(e)}" for what, e in
                                 zip(describe(chosen), effect, strict=True)]
        reasons.append(words)
    return reasons


def _slot_columns(contract: Contract) -> np.ndarray:
    """(encoded slots x input columns) 0/1 matrix: which column each slot came from."""
    matrix = np.zeros((contract.n_features, len(contract.input_columns)), dtype=np.float32)
    n_numeric = len(contract.numeric_inputs)
    matrix[np.arange(n_numeric), np.arange(n_numeric)] = 1.0
    slot = n_numeric
    for column, feature in enumerate(contract.categorical_inputs, start=n_numeric):
        width = len(feature.categories) + 2
        matrix[slot:slot + width, column] = 1.0
        slot += width
    return matrix


def _column_phrases(contract: Contract, rows: pd.DataFrame, name: str
                    ) -> Callable[[np.ndarray], list[str]]:
    """A function from row positions to the words describing this column's value."""
    numeric = {f.name: f for f in contract.numeric_inputs}
    if name in numeric:
        feature = numeric[name]
        values, _ = to_float(rows[name])

        def describe_numeric(chosen: np.ndarray) -> list[str]:
            return [_numeric_words(name, v, feature.center, feature.impute)
                    for v in values[chosen]]

        return describe_numeric
    feature = next(f for f in contract.categorical_inputs if f.name == name)
    slots = contract.category_codes(rows[name], feature)
    raw = rows[name].to_numpy(dtype=object)
    labels = [*feature.categories, UNKNOWN_CATEGORY, contract.missing_categorical]
    n_known = len(feature.categories)

    def describe_categorical(chosen: np.ndarray) -> list[str]:
        return [_category_words(name, int(s), labels, n_known, value)
                for s, value in zip(slots[chosen], raw[chosen], strict=True)]

    return describe_categorical


def _numeric_words(name: str, value: float, center: float, impute: float) -> str:
    if np.isnan(value):
        return f"missing {name} (imputed {_number(impute)})"
    level = "high" if value > center else "low" if value < center else "average"
    return f"{level} {name} ({_number(value)})"


def _category_words(name: str, slot: int, labels: list[str], n_known: int, value: object
                    ) -> str:
    if slot == n_known + 1:
        return f"{name} missing"
    if slot == n_known:
        return f"{name} = {value} (not a known category)"
    return f"{name} = {labels[slot]}"


def _direction(effect: float) -> str:
    return "raises risk" if effect > 0 else "lowers risk" if effect < 0 else "does not change risk"


def _number(value: float) -> str:
    if float(value).is_integer() or abs(value) >= _LARGE_VALUE:
        return f"{value:,.0f}"
    return f"{value:.3g}"
