"""Turn column values into canonical numbers and strings.

Tables reach a bank from CSV, Parquet or memory, so the same value can arrive
as ``1``, ``1.0``, ``"1"`` or a pandas string. Everything that compares values
(encoding, labels, fingerprints) goes through these helpers so that the
storage format never changes the result.
"""

from __future__ import annotations

import numbers
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from fedrisk.data.errors import DataError

# 12 significant digits: enough to tell real values apart, few enough that a
# float that lost its last bit in a CSV round trip still prints the same.
_NUMBER_FORMAT = ".12g"
# What a CSV reader (pandas) takes for a number or a boolean when a whole column holds such
# cells: the same cell reads as text when another cell of its column is not one. ASCII
# digits and spaces only (pandas reads "١٢" as text); no spaces around "inf" or booleans.
_NUMBER_TEXT = re.compile(r"[ \t\n\r\f\v]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
                          r"[ \t\n\r\f\v]*|[+-]?(?i:inf|infinity)")
_BOOLEAN_TEXT = re.compile(r"(?i:true|false)")
# Control characters and line/paragraph separators: they break a one-line message.
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


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
        numbers_ = pd.Series(series.to_numpy(dtype=float, na_value=np.nan))
        text = _per_distinct(numbers_, format_number)
    elif isinstance(series.dtype, pd.StringDtype):
        text = _per_distinct(series, str)
    else:  # object: 1, 1.0 and True are equal keys to pandas but print differently
        text = np.array([_value_to_string(v) for v in series.to_numpy(dtype=object)], dtype=object)
    text = text.astype(object)
    text[missing] = None
    return pd.Series(text, index=series.index, dtype=object)


def comparable_strings(series: pd.Series) -> pd.Series:
    """Canonical strings in which a number or boolean written as text compares as such.

    As :func:`canonical_strings`, and a text a CSV reader could have read as a number or
    boolean compares as that number or boolean (:func:`comparable_text`).

    What encoding compares with a contract's categories, labels and grade levels: a bank's
    file holding ``1.0`` and ``a`` in one column is read as text (``"1.0"``), another's
    holding only ``1.0`` as numbers (``"1"``); the same code must match the same slot.
    """
    strings = canonical_strings(series)
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return strings
    return pd.Series(_per_distinct(strings, comparable_text), index=series.index, dtype=object)


def _per_distinct(series: pd.Series, to_text: Callable[[Any], str]) -> np.ndarray:
    """``to_text`` of every present value (``None`` where missing), once per distinct value.

    A column of 200,000 rows holds a few hundred distinct values. Only for homogeneous
    columns (numbers, or text), whose equal values print alike.
    """
    codes, distinct = pd.factorize(series, use_na_sentinel=True)
    texts = np.array([to_text(value) for value in distinct] + [None], dtype=object)
    return texts[codes]  # the sentinel -1 picks the trailing None


def comparable_text(text: str) -> str:
    """``"1.0"``, ``"01"``, ``" 1"`` -> ``"1"``; ``"true"`` -> ``"True"``; other text as is."""
    if _NUMBER_TEXT.fullmatch(text):
        return format_number(float(text))
    if _BOOLEAN_TEXT.fullmatch(text):
        return text.capitalize()
    return text


def looks_like_number_or_boolean(series: pd.Series) -> np.ndarray:
    """Mask of text values :func:`comparable_text` would change (vectorized, for string dtypes)."""
    found = np.zeros(len(series), dtype=bool)
    for pattern in (_NUMBER_TEXT, _BOOLEAN_TEXT):
        found |= series.str.fullmatch(pattern.pattern).fillna(False).to_numpy(dtype=bool)
    return found


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


def quote_name(name: object) -> str:
    """A column name as messages show it: quoted, control characters escaped (one line)."""
    text = "".join(c.encode("unicode_escape").decode("ascii") if _is_control(c) else c
                   for c in str(name))
    return f"'{text}'"


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds a control character or line separator (breaking one line)."""
    return any(_is_control(c) for c in text)


def _is_control(character: str) -> bool:
    return unicodedata.category(character) in _CONTROL_CATEGORIES


def examples(values: pd.Series | np.ndarray, limit: int = 3) -> str:
    """Return up to ``limit`` distinct values as a short one-line list for messages."""
    distinct = list(dict.fromkeys(pd.Series(values).tolist()))[:limit]
    shown = ", ".join(_short_repr(v) for v in distinct)
    return shown + (", ..." if len(pd.Series(values).unique()) > limit else "")


def _short_repr(value: object, width: int = 30) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
