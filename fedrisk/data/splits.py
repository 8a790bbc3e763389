"""Split tables: train/test within a bank, and one table into several banks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from fedrisk.data.contract import Contract
from fedrisk.data.errors import DataError
from fedrisk.data.tables import TABLE_FORMATS, read_table, write_table
from fedrisk.data.values import canonical_strings
from fedrisk.files import ensure_private_dir

# Each class needs a row in train and a row in test, so every bank needs two.
_MIN_ROWS_PER_CLASS = 2
# Dirichlet draws tried before giving up; with sensible settings a few suffice.
_MAX_DIRICHLET_DRAWS = 1000


def stratified_split(
    df: pd.DataFrame, contract: Contract, test_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a bank's table into train and test, stratified on the label.

    The test set holds ``round(test_fraction * len(df))`` rows (within one row:
    each class keeps at least one row on each side). Rows keep their order
    and index. The same table, contract and seed give the same split.

    Raises:
        DataError: ``test_fraction`` not in (0, 1), missing target values, or a
            class with fewer than two rows.

    """
    if not 0 < test_fraction < 1:
        raise DataError(f"test fraction must be between 0 and 1, got {test_fraction}")
    labels = contract.labels(df)
    rng = np.random.default_rng(seed)
    class_rows = [np.flatnonzero(labels == value) for value in (0.0, 1.0)]
    for value, rows in zip(("non-default", "default"), class_rows, strict=True):
        if len(rows) < _MIN_ROWS_PER_CLASS:
            raise DataError(
                f"column '{contract.target}': {len(rows)} {value} rows; a stratified split "
                f"needs at least {_MIN_ROWS_PER_CLASS} of each class"
            )
    test_counts = _allocate(test_fraction, [len(rows) for rows in class_rows])
    is_test = np.zeros(len(df), dtype=bool)
    for rows, n_test in zip(class_rows, test_counts, strict=True):
        is_test[rng.permutation(rows)[:n_test]] = True
    return df[~is_test], df[is_test]


def _allocate(fraction: float, sizes: list[int]) -> list[int]:
    """Per-class test counts summing to round(fraction * total), each in [1, size - 1]."""
    total = int(np.floor(fraction * sum(sizes) + 0.5))
    ideal = np.array(sizes, dtype=float) * fraction
    counts = np.floor(ideal).astype(int)
    # Largest remainder method: hand the leftover rows to the largest fractional parts.
    for i in np.argsort(-(ideal - counts), kind="stable")[: max(total - counts.sum(), 0)]:
        counts[i] += 1
    return [int(min(max(c, 1), size - 1)) for c, size in zip(counts, sizes, strict=True)]


def split_table(
    df: pd.DataFrame,
    *,
    by: str | None = None,
    n_banks: int | None = None,
    contract: Contract | None = None,
    seed: int = 0,
    alpha: float = 0.5,
    region_map: Mapping[str, str] | None = None,
    min_rows: int = 50,
    source: str = "table",
) -> dict[str, pd.DataFrame]:
    """Split one table into several banks' tables.

    Args:
        df: The pooled table (a simulation convenience; real banks never pool).
        by: Column whose values (mapped through ``region_map`` if given) name
            the banks: one bank per value, bank id = slugified value.
        n_banks: Instead of ``by``: this many banks ``bank-1``... with sizes and
            default rates skewed by a seeded Dirichlet(``alpha``) draw per class.
            Draws are repeated (deterministically) until every bank has at least
            ``min_rows`` rows and two rows of each class.
        contract: Needed with ``n_banks``, to read the labels.
        seed: Seed of the Dirichlet draws.
        alpha: Dirichlet concentration; smaller means more skewed banks.
        region_map: Maps values of ``by`` to bank names (e.g. state -> region);
            banks then come in the map's order.
        min_rows: Smallest bank allowed with ``n_banks``.
        source: How to name the table in error messages.

    Returns:
        Bank id -> that bank's rows (original order and index), in bank order.

    Raises:
        DataError: Neither or both of ``by`` and ``n_banks``, an unknown column,
            values the region map does not cover, or an impossible split.

    """
    if (by is None) == (n_banks is None):
        raise DataError("split: give exactly one of by=COLUMN or n_banks=N")
    if by is not None:
        return _split_by_column(df, by, region_map, source)
    if contract is None:
        raise DataError("split: n_banks needs a contract to read the labels")
    return _split_dirichlet(df, contract, int(n_banks), seed, alpha, min_rows, source)


def _split_by_column(
    df: pd.DataFrame, by: str, region_map: Mapping[str, str] | None, source: str
) -> dict[str, pd.DataFrame]:
    if by not in df.columns:
        raise DataError(f"{source}: column '{by}' is not in the table (cannot split by it)")
    values = canonical_strings(df[by])
    if values.isna().any():
        raise DataError(
            f"{source}: column '{by}': no value to assign a bank ({int(values.isna().sum())} rows)"
        )
    if region_map is not None:
        mapping = {str(k): str(v) for k, v in region_map.items()}
        unmapped = values[~values.isin(list(mapping))]
        if len(unmapped):
            raise DataError(
                f"{source}: column '{by}': values not in the region map, such as "
                f"'{unmapped.iloc[0]}' ({len(unmapped)} rows)"
            )
        values = values.map(mapping)
        order = [v for v in dict.fromkeys(mapping.values()) if v in set(values)]
    else:
        order = sorted(values.unique(), key=slugify)
    banks: dict[str, pd.DataFrame] = {}
    for value in order:
        bank = slugify(value)
        if bank in banks:
            raise DataError(f"{source}: column '{by}': two values give the same bank id '{bank}'")
        banks[bank] = df[(values == value).to_numpy()]
    return banks


def _split_dirichlet(
    df: pd.DataFrame,
    contract: Contract,
    n_banks: int,
    seed: int,
    alpha: float,
    min_rows: int,
    source: str,
) -> dict[str, pd.DataFrame]:
    if n_banks < 1 or alpha <= 0:
        raise DataError(f"split: need n_banks >= 1 and alpha > 0, got {n_banks} and {alpha}")
    labels = contract.labels(df, source=source)
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_DIRICHLET_DRAWS):
        assignment = _dirichlet_assignment(labels, n_banks, alpha, rng)
        if _every_bank_usable(assignment, labels, n_banks, min_rows):
            return {f"bank-{i + 1}": df[assignment == i] for i in range(n_banks)}
    raise DataError(
        f"{source}: cannot split {len(df)} rows ({int(labels.sum())} defaults) into {n_banks} "
        f"skewed banks of at least {min_rows} rows and 2 of each class ({_MAX_DIRICHLET_DRAWS} "
        "draws tried); use fewer banks, more rows, or split by a column"
    )


def _dirichlet_assignment(
    labels: np.ndarray, n_banks: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Bank index per row: each class is dealt out by its own Dirichlet proportions."""
    assignment = np.empty(len(labels), dtype=np.int64)
    for value in (0.0, 1.0):
        rows = rng.permutation(np.flatnonzero(labels == value))
        shares = rng.dirichlet(np.full(n_banks, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for bank, part in enumerate(np.split(rows, cuts)):
            assignment[part] = bank
    return assignment


def _every_bank_usable(
    assignment: np.ndarray, labels: np.ndarray, n_banks: int, min_rows: int
) -> bool:
    sizes = np.bincount(assignment, minlength=n_banks)
    positives = np.bincount(assignment, weights=labels, minlength=n_banks)
    negatives = sizes - positives
    return bool(
        (sizes >= min_rows).all()
        and (positives >= _MIN_ROWS_PER_CLASS).all()
        and (negatives >= _MIN_ROWS_PER_CLASS).all()
    )


def split_table_file(
    path: str | Path,
    *,
    by: str | None = None,
    n_banks: int | None = None,
    contract_path: str | Path | None = None,
    out_dir: str | Path,
    seed: int = 0,
    fmt: str = "csv",
    alpha: float = 0.5,
    region_map: Mapping[str, str] | None = None,
    min_rows: int = 50,
) -> dict[str, Path]:
    """Split a table file into one file per bank, ``OUT_DIR/<bank>.<fmt>``.

    See :func:`split_table` for the splitting rules. Existing files with the
    same names are overwritten.

    Returns:
        Bank id -> path of the file written.

    Raises:
        DataError: Unreadable table or contract, unknown format, or an
            impossible split.

    """
    if fmt not in TABLE_FORMATS:
        raise DataError(f"unknown table format '{fmt}' (choose one of {', '.join(TABLE_FORMATS)})")
    df = read_table(path)
    contract = Contract.load(contract_path) if contract_path is not None else None
    banks = split_table(
        df,
        by=by,
        n_banks=n_banks,
        contract=contract,
        seed=seed,
        alpha=alpha,
        region_map=region_map,
        min_rows=min_rows,
        source=str(path),
    )
    out = Path(out_dir)
    ensure_private_dir(out)
    # Bank tables are read back by fedrisk: written exactly, never formula-escaped.
    return {bank: write_table(rows, out / f"{bank}.{fmt}", exact=True)
            for bank, rows in banks.items()}


def slugify(value: object) -> str:
    """Turn a value into a bank id: lowercase letters, digits, ``_`` and ``-``.

    Raises:
        DataError: Nothing usable is left (e.g. the value is only punctuation).

    """
    slug = re.sub(r"[^a-z0-9_-]+", "_", str(value).strip().lower()).strip("_-")
    if not slug:
        raise DataError(f"cannot make a bank id from value {value!r}")
    return slug
