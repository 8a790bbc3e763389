"""Turn column values into canonical numbers and strings.

Tables reach a bank from CSV, Parquet or memory, so the same value can arrive
as ``1``, ``1.0``, ``"1"`` or a pandas string. Everything that compares values
(encoding, labels, fingerprints) goes through these helpers so that the
storage format never changes the result.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from fedrisk.data.errors import DataError

# 12 significant digits: enough to tell real values apart, few enough that a
# float that lost its last bit in a CSV round trip still prints the same.
_NUMBER_FORMAT = ".12g"


def format_number(value: float) -> str:
    """Format a number canonically: ``1``, ``1.0`` and ``True`` print alike."""
    return format(float(value), _NUMBER_FORMAT)


def canonical_strings(series: pd.Series) -> pd.Series:
    """Return the values as canonical strings (object dtype, ``None`` if missing).

    Numbers print with :func:`format_number`, so an integer code read from CSV
    matches the same code read from Parquet as a float or string column.
    """
    missing = series.isna().to_numpy()
    if pd.api.types.is_bool_dtype(series):
        text = np.where(series.to_numpy(dtype=bool, na_value=False), "True", "False")
    elif pd.api.types.is_numeric_dtype(series):
        numbers_ = series.to_numpy(dtype=float, na_value=np.nan)
        text = np.array([format_number(v) for v in numbers_], dtype=object)
    else:
        text = np.array([_value_to_string(v) for v in series.to_numpy(dtype=object)], dtype=object)
    text = text.astype(object)
    text[missing] = None
    return pd.Series(text, index=series.index, dtype=object)


def value_text(value: object) -> str:
    """Canonical text of one contract value (a label or category), as a table would give it."""
    text = _value_to_string(value)
    if text is None:
        raise DataError("a label, category or grade level cannot be missing")
    return text


def _value_to_string(value: object) -> str | None:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, numbers.Number):
        return None if pd.isna(value) else format_number(float(value))
    return str(value)


def to_float(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Parse a column as float64.

    Returns:
        ``(values, non_numeric)``: the parsed values (NaN where missing or not
        a number) and a boolean mask of present values that are not numbers.

    """
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        return values, np.zeros(len(values), dtype=bool)
    parsed = pd.to_numeric(series, errors="coerce")
    values = parsed.to_numpy(dtype=float, na_value=np.nan)
    non_numeric = np.isnan(values) & ~series.isna().to_numpy()
    return values, non_numeric


def examples(values: pd.Series | np.ndarray, limit: int = 3) -> str:
    """Return up to ``limit`` distinct values as a short one-line list for messages."""
    distinct = list(dict.fromkeys(pd.Series(values).tolist()))[:limit]
    shown = ", ".join(_short_repr(v) for v in distinct)
    return shown + (", ..." if len(pd.Series(values).unique()) > limit else "")


def _short_repr(value: object, width: int = 30) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
