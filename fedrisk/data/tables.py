"""Read and write bank tables (CSV and Parquet) with one-line errors.

CSV files fedrisk writes for people (scores, rejects, loss contributions) are opened in
spreadsheets, which run a cell starting with ``=``, ``+``, ``-`` or ``@`` as a formula
(OWASP "CSV injection"); applicant ids and rejected cells come from whoever supplied the
table. So :func:`write_table` escapes such text cells unless asked for an exact copy.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fedrisk.data.errors import DataError, first_line
from fedrisk.files import private_file

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_FORMATS = ("csv", "parquet")
# OWASP's list: a spreadsheet evaluates a cell starting with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FORMULA_ESCAPE = "'"
CSV_LINE_END = "\r\n"
# A plain decimal number ("-1.5", "+2e3") is a number to a spreadsheet, never a formula.
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a bank table from ``.csv``, ``.parquet`` or ``.pq``.

    Raises:
        DataError: One line naming the file: missing, a directory, unknown
            extension, empty, or unreadable.

    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        known = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
        raise DataError(f"{path}: unknown file extension '{path.suffix}' (expected {known})")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a table file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        if suffix in CSV_SUFFIXES:
            return _with_raw_header(pd.read_csv(path), path)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file has no columns") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except Exception as error:  # parsers raise many types; the user needs one line
        raise DataError(f"{path}: cannot read as {_kind(suffix)}: {first_line(error)}") from None


def write_table(df: pd.DataFrame, path: str | Path, *, exact: bool = False) -> Path:
    """Write a table to CSV or Parquet, chosen by the file extension, as a private file.

    Every table fedrisk writes holds rows or per-row results (bank tables, scores,
    rejects, loss contributions), so the file is 0600, missing folders are created
    0700, whatever the umask, and it replaces ``path`` atomically.

    Args:
        df: The table.
        path: Where to write it (``.csv``, ``.parquet`` or ``.pq``).
        exact: Write every cell as it is. Only for bank tables fedrisk reads back
            (``data split``, a simulation's banks): escaping would change the values a
            bank trains on and its dataset fingerprint. Otherwise a CSV gets
            :func:`escape_formulas` (Parquet is never run as formulas).

    Raises:
        DataError: Unknown extension.

    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        raise DataError(
            f"{path}: unknown file extension '{path.suffix}' (expected .csv or .parquet)"
        )
    with private_file(path) as tmp:
        if suffix in CSV_SUFFIXES:
            # CRLF rows (RFC 4180): Python's csv quotes a cell holding any character of the
            # line terminator, so a carriage return inside a cell cannot start a new row.
            (df if exact else escape_formulas(df)).to_csv(tmp, index=False,
                                                          lineterminator=CSV_LINE_END)
        else:
            df.to_parquet(tmp, index=False)
    return path


def escape_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells and column names cannot run as spreadsheet formulas.

    OWASP's rule: a text starting with ``=``, ``+``, ``-``, ``@``, tab or carriage
    return gets a leading ``'``, which spreadsheets show as text. Only text is
    escaped: numbers (``-1.5`` in a numeric column, or ``"-1.5"`` as text) stay as
    they are, so numeric columns read back unchanged.
    """
    escaped = df.copy()
    escaped.columns = [escape_cell(c) for c in df.columns]
    for position in range(df.shape[1]):  # by position: column names may repeat
        values = df.iloc[:, position]
        if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
            # escape_cell decides; only cells whose text starts like a formula are asked
            flagged = values.astype("string").str[:1].isin(FORMULA_PREFIXES).to_numpy(bool)
            if flagged.any():
                column = values.astype(object)
                column[flagged] = values[flagged].map(escape_cell)
                escaped.isetitem(position, column)
    return escaped


def escape_cell(value: object) -> object:
    """``value`` with a leading ``'`` if it is text a spreadsheet would run as a formula."""
    if (isinstance(value, str) and value.startswith(FORMULA_PREFIXES)
            and not _PLAIN_NUMBER.fullmatch(value)):
        return FORMULA_ESCAPE + value
    return value


def _with_raw_header(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Give back repeated column names that pandas renamed (``Income``, ``Income.1``).

    A repeated name is ambiguous (which copy does the contract mean?), so it must stay
    visible for the contract check to refuse, rather than the first copy being used.
    """
    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    names = header.iloc[0].tolist() if len(header) else []
    if len(names) == len(df.columns) and len(set(names)) < len(names):
        df.columns = names
    return df


def _kind(suffix: str) -> str:
    return "CSV" if suffix in CSV_SUFFIXES else "Parquet"
