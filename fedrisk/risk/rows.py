"""Check a table to score against the contract: whole-table errors raise, bad rows are set aside.

Scoring must not stop at the first bad applicant, and must not lose one either.
Each row breaking a rule that the contract treats as an error (a non-numeric value
in a numeric column, a value out of bounds under ``out_of_range = "error"``, an
unseen category under ``unknown = "error"``), or that has no usable exposure when
expected loss is needed (missing, negative or not finite: an infinite loan amount is
no amount), goes to the rejects with a ``reason``. What the contract repairs (missing
values, clipping, bucketing) stays a warning.

Whole-table problems (a missing or repeated column, an empty table) come from
:func:`fedrisk.data.check_table`, run on the rows without row problems (or, if
every row has one, on the table with the offending cells blanked): any error it
still reports is about the table, not a row, and raises ``DataError``.
The target column is optional in a table to score.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedrisk.data import CategoricalFeature, Contract, DataError, NumericFeature, check_table
from fedrisk.data.checks import EMPTY_COLUMN, empty_column_errors
from fedrisk.data.errors import first_problem
from fedrisk.data.values import comparable_strings, comparable_text, quote_name, to_float

ROW_COLUMN = "row"
REASON_COLUMN = "reason"
_REASON_SEPARATOR = "; "

Problem = tuple[str, np.ndarray, list[str]]
"""A column, a mask of its offending rows, and one message per offending row."""


@dataclass(frozen=True)
class CheckedRows:
    """A table split into rows to score and rejected rows.

    Attributes:
        valid: rows that passed, with their 0-based position in the input as ``row``.
        rejects: rows that failed: ``row``, ``reason``, then the input's columns.
        warnings: ``check_table`` warnings (repairs the contract makes), one line each.

    """

    valid: pd.DataFrame
    rejects: pd.DataFrame
    warnings: list[str]


def check_rows(
    df: pd.DataFrame, contract: Contract, source: str, *, need_exposure: bool
) -> CheckedRows:
    """Split ``df`` into rows to score and rejects with reasons; raise on table problems.

    Args:
        df: the table to score, as read (the target column may be absent).
        contract: the run's contract.
        source: how to name the table in messages (usually its path).
        need_exposure: reject rows whose exposure is missing, negative or not finite
            (expected loss needs it; imputing or clipping a loan amount would invent a loss).

    Raises:
        DataError: a whole-table problem, in one line (missing column, empty table, ...).

    """
    repeated = df.columns[df.columns.duplicated()]
    if len(repeated):
        raise DataError(f"{source}: column {quote_name(repeated[0])} appears more than once")
    table = df.drop(columns=[contract.target]).reset_index(drop=True) if (
        contract.target in df.columns) else df.reset_index(drop=True)
    lost = empty_column_errors(table, contract, source)  # of the table, not of a subset
    if lost:
        raise DataError(lost[0].message)
    problems = list(_row_problems(table, contract, need_exposure))
    reasons: dict[int, list[str]] = {}
    for column, bad, messages in problems:
        for row, message in zip(np.flatnonzero(bad), messages, strict=True):
            reasons.setdefault(int(row), []).append(f"column '{column}': {message}")
    rejected = np.zeros(len(table), dtype=bool)
    rejected[list(reasons)] = True
    valid = table[~rejected]
    if len(valid):
        warnings = _table_warnings(valid, contract, source)
    else:  # every row rejected: check the columns with the offending cells blanked
        _table_warnings(_blank(table, problems), contract, source)
        warnings = []
    return CheckedRows(valid=valid.assign(**{ROW_COLUMN: np.flatnonzero(~rejected)}),
                       rejects=_rejects_frame(table, reasons), warnings=warnings)


def _table_warnings(table: pd.DataFrame, contract: Contract, source: str) -> list[str]:
    """Run ``check_table`` on rows without row problems: any error left is the table's.

    Whether a column has no value at all was decided on the whole table: a subset
    (or the offending cells blanked) may lack values where the table had some.
    """
    report = check_table(table, contract, source)
    target = f"{source}: column '{contract.target}':"
    errors = [e for e in report.errors
              if not e.startswith(target) and f"': {EMPTY_COLUMN} (" not in e]
    if errors:
        raise DataError(first_problem(errors))
    return [w for w in report.warnings if not w.startswith(target)]


def _blank(table: pd.DataFrame, problems: list[Problem]) -> pd.DataFrame:
    blanked = table.copy()
    for column, bad, _ in problems:
        blanked[column] = blanked[column].where(~bad)
    return blanked


def _row_problems(table: pd.DataFrame, contract: Contract, need_exposure: bool
                  ) -> Iterator[Problem]:
    """Per column: a mask of offending rows and one message per offending row."""
    for feature in contract.numeric:
        if feature.name in table.columns:
            yield from _numeric_problems(table[feature.name], feature)
    for feature in contract.categorical:
        if feature.name in table.columns and feature.unknown == "error":
            yield _unseen_categories(table[feature.name], feature)
    if need_exposure and contract.exposure in table.columns:
        yield _exposure_problems(table[contract.exposure])


def _numeric_problems(column: pd.Series, feature: NumericFeature) -> Iterator[Problem]:
    values, non_numeric = to_float(column)
    if non_numeric.any():
        shown = column[non_numeric]
        yield feature.name, non_numeric, [f"non-numeric value {v!r}" for v in shown]
    if feature.out_of_range == "error":
        with np.errstate(invalid="ignore"):
            outside = (values < feature.lower) | (values > feature.upper)
        yield feature.name, outside, [
            f"value {v:g} outside [{feature.lower:g}, {feature.upper:g}] "
            f'(policy out_of_range = "error")' for v in values[outside]
        ]


def _unseen_categories(column: pd.Series, feature: CategoricalFeature) -> Problem:
    strings = comparable_strings(column)
    known = {comparable_text(c) for c in feature.categories}
    unseen = (strings.notna() & ~strings.isin(known)).to_numpy()
    return feature.name, unseen, [
        f'category {v!r} not in the contract (policy unknown = "error")' for v in strings[unseen]
    ]


def _exposure_problems(column: pd.Series) -> Problem:
    values, non_numeric = to_float(column)
    missing = np.isnan(values) & ~non_numeric
    with np.errstate(invalid="ignore"):
        bad = missing | (values < 0) | np.isinf(values)
    return str(column.name), bad, [_exposure_reason(v) for v in values[bad]]


def _exposure_reason(value: float) -> str:
    if np.isnan(value):
        return "exposure missing, expected loss needs it"
    if np.isinf(value):
        return f"exposure {value:g} is not a finite amount, expected loss needs one"
    return f"exposure negative ({value:g})"


def _rejects_frame(table: pd.DataFrame, reasons: dict[int, list[str]]) -> pd.DataFrame:
    rows = sorted(reasons)
    rejects = table.iloc[rows].copy()
    rejects.insert(0, REASON_COLUMN, [_REASON_SEPARATOR.join(reasons[r]) for r in rows])
    rejects.insert(0, ROW_COLUMN, rows)
    return rejects.reset_index(drop=True)
