"""Draft a contract from one bank's table, for humans to review before sharing."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from fedrisk.data.contract import CategoricalFeature, Contract, NumericFeature
from fedrisk.data.errors import DataError
from fedrisk.data.values import comparable_strings, comparable_text, value_text

ID_COLUMN_NAMES = ("rownames", "id", "index", "unnamed: 0")
# IQR / 1.349 estimates the standard deviation of a normal distribution robustly.
_IQR_TO_STD = 1.349


def draft_contract(
    df: pd.DataFrame,
    target: str,
    positive_label: str,
    protected: Iterable[str] = (),
    name: str = "custom",
    drop: Iterable[str] = (),
    *,
    grade: str | None = None,
    exposure: str | None = None,
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
    significant_digits: int = 6,
    max_categories: int = 100,
) -> Contract:
    """Draft a contract from one table: every column not dropped becomes a feature.

    Numeric columns get clip bounds at ``clip_percentiles``, center = median,
    scale = IQR / 1.349 (standard deviation if the IQR is 0, 1 if both are),
    impute = median; statistics of the clipped values. Non-numeric columns
    (text, category, bool) become categorical with a sorted vocabulary (rare
    categories kept). Columns that look like row ids are dropped, and so are
    text columns with more than ``max_categories`` distinct values (ids or
    free text, whose vocabulary would list customers' values). Protected
    columns keep a spec but are not model inputs; the grade column (levels
    sorted) is never a feature.

    The result is marked ``drafted``: its statistics describe one bank's
    customers (including its default rate, drafted as ``prior_default_rate``), so
    a human must review it before it is shared.

    Raises:
        DataError: The target, a protected, grade or exposure column is
            missing, or ``positive_label`` never occurs in the target.

    """
    protected, drop = tuple(protected), tuple(drop)
    _check_roles(df, target, positive_label, protected, grade, exposure)
    roles = {target, grade, exposure, *protected, *drop}
    drop += tuple(c for c in df.columns if c not in roles and _looks_like_id(df[c], max_categories))
    columns = [c for c in df.columns if c not in {target, grade, *drop}]
    numeric = tuple(
        _draft_numeric(df[c], clip_percentiles, significant_digits)
        for c in columns
        if _is_numeric(df[c])
    )
    # A protected text column with too many values (e.g. a postcode) stays a
    # required column for audits, but its vocabulary is not written down.
    categorical = tuple(
        _draft_categorical(df[c])
        for c in columns
        if not _is_numeric(df[c]) and df[c].nunique() <= max_categories
    )
    # Codes as every bank's CSV reader compares them: '1.0' and '1' are one level.
    grade_levels = tuple(sorted(comparable_strings(df[grade]).dropna().unique())) if grade else ()
    positive = comparable_text(value_text(positive_label))
    positives = (comparable_strings(df[target]) == positive).mean()
    return Contract(
        prior_default_rate=float(f"{min(max(positives, 0.001), 0.999):.2g}"),
        name=name,
        target=target,
        positive_label=value_text(positive_label),
        numeric=numeric,
        categorical=categorical,
        drop=tuple(str(c) for c in drop),
        protected=protected,
        grade=grade,
        grade_levels=grade_levels,
        exposure=exposure,
        drafted=True,
    )


def _check_roles(
    df: pd.DataFrame,
    target: str,
    positive_label: str,
    protected: tuple[str, ...],
    grade: str | None,
    exposure: str | None,
) -> None:
    roles = [("target", target), *(("protected", p) for p in protected)]
    roles += [(role, c) for role, c in (("grade", grade), ("exposure", exposure)) if c]
    for role, column in roles:
        if column not in df.columns:
            raise DataError(f"column '{column}' ({role}) is not in the table")
    labels = comparable_strings(df[target]).dropna()
    if comparable_text(value_text(positive_label)) not in set(labels):
        found = ", ".join(sorted(labels.unique())[:10])
        raise DataError(
            f"column '{target}': positive label '{positive_label}' never occurs (values: {found})"
        )
    if exposure and not _is_numeric(df[exposure]):
        raise DataError(f"column '{exposure}' (exposure) must be numeric")


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _looks_like_id(column: pd.Series, max_categories: int) -> bool:
    """Ids: a conventional id name, unique integers in increasing order, or too many labels."""
    if str(column.name).strip().lower() in ID_COLUMN_NAMES:
        return True
    if not _is_numeric(column):
        return column.nunique() > max_categories
    if not pd.api.types.is_integer_dtype(column) or len(column) < 2:
        return False
    # Sortedness separates a row counter from a genuine integer feature that
    # happens to have no repeats (e.g. balances in a small table).
    return column.is_unique and column.is_monotonic_increasing


def _draft_numeric(
    column: pd.Series, clip_percentiles: tuple[float, float], digits: int
) -> NumericFeature:
    values = column.to_numpy(dtype=float, na_value=np.nan)
    present = values[~np.isnan(values)]
    if present.size == 0:
        raise DataError(f"column '{column.name}': no values to draft bounds from; list it in drop")
    lower, upper = np.percentile(present, clip_percentiles)
    if lower == upper:  # a near-constant column would otherwise be clipped flat
        lower, upper = present.min(), present.max()
    clipped = np.clip(present, lower, upper)
    q25, median, q75 = np.percentile(clipped, [25, 50, 75])
    scale = (q75 - q25) / _IQR_TO_STD or float(np.std(clipped)) or 1.0
    lower, upper = _round(lower, digits), _round(upper, digits)
    return NumericFeature(
        name=str(column.name),
        lower=lower,
        upper=upper,
        center=_round(median, digits),
        scale=_round(scale, digits),
        impute=min(max(_round(median, digits), lower), upper),
    )


def _draft_categorical(column: pd.Series) -> CategoricalFeature:
    categories = sorted(comparable_strings(column).dropna().unique())
    return CategoricalFeature(name=str(column.name), categories=tuple(categories))


def _round(value: float, digits: int) -> float:
    return float(format(float(value), f".{digits}g")) if digits else float(value)
