"""Check a bank's table against the contract before anything trains on it.

Row-level rules run as two pandera schemas built from the contract (one whose
failures are errors, one whose failures are warnings), validated lazily; their
failure cases are grouped into one line per column and problem with a row
count. Table-level rules (empty table, one class only, duplicates, extra
columns) are plain pandas.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from fedrisk.data.contract import UNKNOWN_CATEGORY, CategoricalFeature, Contract, NumericFeature
from fedrisk.data.errors import DataError, first_line
from fedrisk.data.tables import read_table
from fedrisk.data.values import (
    comparable_strings,
    comparable_text,
    examples,
    quote_name,
    to_float,
)

EMPTY_COLUMN = "has no value in any row"


@dataclass
class CheckReport:
    """What is wrong (errors) or worth knowing (warnings) about one table.

    Every message is one line: ``"<source>: column '<col>': <problem> (<k> rows)"``.
    ``public_errors`` says the same of each error without anything read from the
    rows: a fixed text per check naming only a contract column (``"column 'income':
    non-numeric values in a numeric column"``), no values, row counts, file names or
    other table columns. It is what a bank may tell others about why it refuses.
    """

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_rows: int = 0
    public_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if the table can be used: warnings allowed, no errors."""
        return not self.errors

    def add_errors(self, findings: list[Finding]) -> None:
        """Record errors, each with its value-free public text."""
        self.errors += [finding.message for finding in findings]
        self.public_errors += [finding.public for finding in findings]


class Finding(NamedTuple):
    """One problem: its full message, and the same without anything read from the rows."""

    message: str
    public: str


def check_table(df: pd.DataFrame, contract: Contract, source: str = "table") -> CheckReport:
    """Check a table against a contract; never raises for a bad table.

    Errors: missing or repeated columns, contract columns without a single value
    (in a table of two rows or more), non-numeric values in numeric columns, values
    out of range or unseen categories where the contract's policy is ``"error"``,
    missing target values, an empty table, a single class.
    Warnings: duplicate rows, missing values (and how they are imputed),
    values clipped, unseen categories bucketed, unknown grades, extra columns.

    Args:
        df: The bank's table.
        contract: The agreed contract.
        source: How to name the table in messages (usually its file path).

    """
    try:
        return _check(df, contract, source)
    except Exception as error:  # a checker must report, not crash, whatever the table holds
        return CheckReport([f"{source}: could not check the table: {first_line(error)}"], [],
                           len(df), ["the table could not be checked"])


def check_table_file(path: str | Path, contract_path: str | Path) -> CheckReport:
    """Read a table and a contract and check one against the other.

    Unreadable files (table or contract) become report errors, not exceptions.
    """
    try:
        contract = Contract.load(contract_path)
        df = read_table(path)
    except DataError as error:
        return CheckReport([str(error)], [], 0, ["the table or its contract cannot be read"])
    return check_table(df, contract, source=str(path))


# ----- the checks ----------------------------------------------------------------


def _check(df: pd.DataFrame, contract: Contract, source: str) -> CheckReport:
    report = CheckReport(n_rows=len(df))
    repeated = [str(c) for c in df.columns[df.columns.duplicated()].unique()]
    if repeated:
        report.add_errors([
            Finding(f"{source}: column {quote_name(c)}: appears more than once "
                    f"({_rows(len(df))})",
                    _public(contract, c, "appears more than once")) for c in repeated])
        return report
    df = df.reset_index(drop=True)  # failure cases are counted by row label
    report.add_errors(_schema_messages(_error_schema(contract), df, contract, source, _ERRORS))
    if df.empty:
        report.add_errors([Finding(f"{source}: table is empty (0 rows)", "the table is empty")])
        return report
    report.add_errors(empty_column_errors(df, contract, source))
    report.add_errors(_class_balance_errors(df, contract, source))
    report.warnings += _duplicate_warnings(df, contract, source)
    repairable = df.drop(columns=lost_columns(df, contract))  # lost: an error, not imputed
    report.warnings += [finding.message for finding in _schema_messages(
        _warning_schema(contract, repairable), df, contract, source, _WARNINGS)]
    report.warnings += _target_value_warnings(df, contract, source)
    report.warnings += [
        f"{source}: column {quote_name(c)}: not in the contract, ignored ({_rows(len(df))})"
        for c in df.columns
        if c not in contract.required_columns and c not in contract.drop
    ]
    return report


def empty_column_errors(df: pd.DataFrame, contract: Contract, source: str) -> list[Finding]:
    """A contract column with no value in any row: an export that lost it, not missing values.

    Imputing a whole column would train or score every row on a made-up value. In a
    table of one row a missing value is only a missing value.
    """
    return [Finding(f"{source}: column '{c}': {EMPTY_COLUMN} (every cell is empty: was the "
                    f"column lost?) ({_rows(len(df))})", _public(contract, c, EMPTY_COLUMN))
            for c in lost_columns(df, contract)]


def lost_columns(df: pd.DataFrame, contract: Contract) -> list[str]:
    """Contract columns other than the target with no value in any row (of two rows or more)."""
    if len(df) < 2:
        return []
    return [c for c in contract.required_columns
            if c in df.columns and c != contract.target and df[c].isna().all()]


def _class_balance_errors(df: pd.DataFrame, contract: Contract, source: str) -> list[Finding]:
    if contract.target not in df.columns:
        return []
    labels = comparable_strings(df[contract.target]).dropna()
    if labels.empty:
        return []
    n_positive = int((labels == comparable_text(contract.positive_label)).sum())
    where = f"{source}: column '{contract.target}'"
    public = _public(contract, contract.target, "single class (a bank needs both)")
    if n_positive == 0:
        seen = examples(labels)
        return [Finding(
            f"{where}: single class, positive label '{contract.positive_label}' never occurs "
            f"(values: {seen}); a bank needs both defaults and non-defaults ({_rows(len(labels))})",
            public)]
    if n_positive == len(labels):
        return [Finding(
            f"{where}: single class, every row has the positive label "
            f"'{contract.positive_label}'; a bank needs both classes ({_rows(len(labels))})",
            public)]
    return []


def _duplicate_warnings(df: pd.DataFrame, contract: Contract, source: str) -> list[str]:
    # Ids in dropped columns make every row unique; compare what the model sees.
    columns = contract.required_columns
    if not set(columns) <= set(df.columns):
        return []  # already an error; duplicates over a subset would mislead
    n_duplicates = int(df.duplicated(subset=columns).sum())
    if not n_duplicates:
        return []
    return [
        f"{source}: duplicate rows, same values in every contract column ({_rows(n_duplicates)})"
    ]


def _target_value_warnings(df: pd.DataFrame, contract: Contract, source: str) -> list[str]:
    """Catch labels like 'Bad' or 'bad ' that would silently count as non-default."""
    if contract.target not in df.columns:
        return []
    labels = comparable_strings(df[contract.target]).dropna()
    negatives = labels[labels != comparable_text(contract.positive_label)]
    if negatives.nunique() <= 1:
        return []
    usual = negatives.value_counts().index[0]
    odd = negatives[negatives != usual]
    return [
        f"{source}: column '{contract.target}': values other than '{contract.positive_label}' "
        f"and {examples([usual])}, such as {examples(odd)}, count as non-default "
        f"({_rows(len(odd))})"
    ]


# ----- pandera schemas ---------------------------------------------------------------


def _error_schema(contract: Contract) -> pa.DataFrameSchema:
    """Columns must exist; values must satisfy the contract's "error" policies."""
    checks: dict[str, list[pa.Check]] = {c: [] for c in contract.required_columns}
    for feature in contract.numeric:
        checks[feature.name].append(pa.Check(_numeric_values, name="non_numeric"))
        if feature.out_of_range == "error":
            checks[feature.name].append(pa.Check(_within(feature), name="out_of_range"))
    for feature in contract.categorical:
        if feature.unknown == "error":
            checks[feature.name].append(pa.Check(_known(feature), name="unseen_category"))
    columns = {
        name: pa.Column(None, checks=column_checks, nullable=name != contract.target, required=True)
        for name, column_checks in checks.items()
    }
    return pa.DataFrameSchema(columns, name="contract errors")


def _warning_schema(contract: Contract, df: pd.DataFrame) -> pa.DataFrameSchema:
    """Build the schema of what the encoding repairs: missing values, clipping, bucketing."""
    present = [c for c in contract.required_columns if c in df.columns and c != contract.target]
    checks: dict[str, list[pa.Check]] = {c: [] for c in present}
    for feature in contract.numeric_inputs:
        if feature.name in checks and feature.out_of_range == "clip":
            checks[feature.name].append(pa.Check(_within(feature), name="clipped"))
    for feature in contract.categorical_inputs:
        if feature.name in checks and feature.unknown == "bucket":
            checks[feature.name].append(pa.Check(_known(feature), name="bucketed"))
    if contract.grade in checks:
        levels = CategoricalFeature(contract.grade, contract.grade_levels)
        checks[contract.grade].append(pa.Check(_known(levels), name="unknown_grade"))
    columns = {
        name: pa.Column(None, checks=column_checks, nullable=False, required=False)
        for name, column_checks in checks.items()
    }
    return pa.DataFrameSchema(columns, name="contract warnings")


def _numeric_values(column: pd.Series) -> pd.Series:
    _, non_numeric = to_float(column)
    return pd.Series(~non_numeric, index=column.index)


def _within(feature: NumericFeature) -> Callable[[pd.Series], pd.Series]:
    def check(column: pd.Series) -> pd.Series:
        values, _ = to_float(column)
        with np.errstate(invalid="ignore"):
            outside = (values < feature.lower) | (values > feature.upper)
        return pd.Series(~outside, index=column.index)

    return check


def _known(feature: CategoricalFeature) -> Callable[[pd.Series], pd.Series]:
    vocabulary = {comparable_text(c) for c in feature.categories}

    def check(column: pd.Series) -> pd.Series:
        strings = comparable_strings(column)
        return strings.isna() | strings.isin(vocabulary)

    return check


# ----- grouping failure cases into messages ------------------------------------------

Message = Callable[[Contract, str, str], str]

_ERRORS: dict[str, Message] = {
    "column_in_dataframe": lambda c, col, ex: "missing from the table but required by the contract",
    "non_numeric": lambda c, col, ex: f"non-numeric values in a numeric column, such as {ex}",
    "out_of_range": lambda c, col, ex: (
        f'values outside {_bounds(c, col)}, such as {ex} (policy out_of_range = "error")'
    ),
    "unseen_category": lambda c, col, ex: (
        f'categories not in the contract, such as {ex} (policy unknown = "error")'
    ),
    "not_nullable": lambda c, col, ex: "target value missing",
}
# The same problems without values or counts: what may be said outside the bank.
_PUBLIC_ERRORS = {
    "column_in_dataframe": "missing from the table",
    "non_numeric": "non-numeric values in a numeric column",
    "out_of_range": 'values outside the contract\'s bounds (policy out_of_range = "error")',
    "unseen_category": 'categories not in the contract (policy unknown = "error")',
    "not_nullable": "target value missing",
}

_WARNINGS: dict[str, Message] = {
    "not_nullable": lambda c, col, ex: f"missing values, {_imputation(c, col)}",
    "clipped": lambda c, col, ex: f"values outside {_bounds(c, col)} clipped, such as {ex}",
    "bucketed": lambda c, col, ex: (
        f"categories not in the contract, such as {ex}, encoded in the '{UNKNOWN_CATEGORY}' slot"
    ),
    "unknown_grade": lambda c, col, ex: f"grades not in grade_levels, such as {ex}, encoded as -1",
}


def _schema_messages(
    schema: pa.DataFrameSchema,
    df: pd.DataFrame,
    contract: Contract,
    source: str,
    messages: dict[str, Message],
) -> list[Finding]:
    """Validate lazily and turn failure cases into one line per column and check."""
    try:
        schema.validate(df, lazy=True)
    except SchemaErrors as failures:
        cases = failures.failure_cases
    else:
        return []
    lines = []
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        if check == "column_in_dataframe":
            for missing in group["failure_case"]:
                lines.append(Finding(_missing_column(df, contract, source, str(missing)),
                                     _public(contract, str(missing), "missing from the table")))
            continue
        rows = group["index"].dropna().nunique()
        found = examples(group["failure_case"].dropna())
        describe = messages.get(str(check), _unnamed_check(str(check)))
        public = _PUBLIC_ERRORS.get(str(check), "failed a check of the contract")
        lines.append(Finding(
            f"{source}: column '{column}': {describe(contract, column, found)} ({_rows(rows)})",
            _public(contract, str(column), public)))
    return lines


def _public(contract: Contract, column: str, problem: str) -> str:
    """A problem's public text: it names the column only if the (public) contract does."""
    where = f"column '{column}'" if column in contract.required_columns else "a column"
    return f"{where}: {problem}"


def _unnamed_check(check: str) -> Message:
    return lambda contract, column, found: f"failed check {check}, such as {found}"


def _missing_column(df: pd.DataFrame, contract: Contract, source: str, column: str) -> str:
    extra = [str(c) for c in df.columns if c not in contract.required_columns]
    close = difflib.get_close_matches(column, extra, n=1)
    hint = f" (did you mean {quote_name(close[0])}?)" if close else ""
    problem = _ERRORS["column_in_dataframe"](contract, column, "")
    return f"{source}: column '{column}': {problem}{hint} ({_rows(len(df))})"


def _bounds(contract: Contract, column: str) -> str:
    feature = next(f for f in contract.numeric if f.name == column)
    return f"[{feature.lower:g}, {feature.upper:g}]"


def _imputation(contract: Contract, column: str) -> str:
    """How the contract's encoding treats a missing value in this column."""
    if column == contract.grade:
        return "grade encoded as -1"
    if column not in contract.input_columns:
        return "not a model input; fairness audits cannot place these rows"
    numeric = {f.name: f for f in contract.numeric_inputs}
    if column in numeric:
        return f"imputed with {numeric[column].impute:g}"
    return f"encoded in the '{contract.missing_categorical}' slot"


def _rows(count: int) -> str:
    return f"{count:,} row" if count == 1 else f"{count:,} rows"
