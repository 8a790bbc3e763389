"""Read and write bank tables (CSV and Parquet) with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedrisk.data.errors import DataError, first_line
from fedrisk.files import private_file

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_FORMATS = ("csv", "parquet")


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
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file has no columns") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the CSV as UTF-8") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except Exception as error:  # parsers raise many types; the user needs one line
        raise DataError(f"{path}: cannot read as {_kind(suffix)}: {first_line(error)}") from None


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table to CSV or Parquet, chosen by the file extension, as a private file.

    Every table fedrisk writes holds rows or per-row results (bank tables, scores,
    rejects, loss contributions), so the file is 0600, missing folders are created
    0700, whatever the umask, and it replaces ``path`` atomically.

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
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return path


def _kind(suffix: str) -> str:
    return "CSV" if suffix in CSV_SUFFIXES else "Parquet"
