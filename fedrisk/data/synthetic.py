"""Synthetic consortia for capacity planning: new rows shaped like an embedded dataset.

One Gaussian copula per class of the target. Each column keeps its own
empirical distribution within the class (missing values included, as a level
of their own); the dependence between columns is the correlation of their
normal scores. Categorical columns, the grade and discrete numbers (at most
:data:`DISCRETE_MAX_LEVELS` distinct values, e.g. counts of inquiries) are
drawn from their observed levels; other numbers are drawn from the linearly
interpolated empirical quantile function and rounded to the source's
precision, so a synthetic row is new, not a copy of a source row.

Privacy: this is a capacity-planning tool, not a privacy mechanism. It is
fitted only on the embedded public datasets. A copula fitted on a bank's own
table reproduces that table's marginals exactly (including its extremes) and
is not differentially private: such synthetic data must not leave the bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from fedrisk.data.contract import Contract
from fedrisk.data.embedded import load_embedded
from fedrisk.data.errors import DataError
from fedrisk.data.tables import write_table
from fedrisk.data.values import canonical_strings
from fedrisk.files import ensure_private_dir

# A numeric column with at most this many distinct values in the source is drawn
# from those values (counts, rate tables); above it, from the interpolated quantiles.
DISCRETE_MAX_LEVELS = 100
# Rows decoded per block: bounds the memory of a large draw (two float64 blocks).
_BLOCK_ROWS = 1 << 16
# Smallest eigenvalue kept in a class's correlation of normal scores.
_MIN_EIGENVALUE = 1e-6
_MAX_DECIMALS = 6
DATA_FILENAME = "data.parquet"
CONTRACT_FILENAME = "contract.toml"


@dataclass(frozen=True)
class Marginal:
    """One column's empirical distribution within one class.

    ``levels`` are ordered (categories in contract order, numbers ascending,
    missing first for numbers and last for categories) with probabilities
    ``probabilities``. A ``continuous`` marginal also keeps the class's sorted
    present values, read through linear interpolation, and the share of
    missing values ``missing``.
    """

    kind: str  # "categorical", "discrete" (drawn from levels) or "continuous" (interpolated)
    levels: np.ndarray
    probabilities: np.ndarray
    sorted_values: np.ndarray
    missing: float
    decimals: int

    def to_uniform(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Distributional transform: level index to a uniform, spread over the level's mass."""
        below = np.concatenate(([0.0], np.cumsum(self.probabilities)[:-1]))
        return below[codes] + rng.random(len(codes)) * self.probabilities[codes]

    def from_uniform(self, u: np.ndarray) -> np.ndarray:
        """Inverse transform: uniforms to level indices, or to numbers if continuous."""
        if self.kind != "continuous":
            cumulative = np.cumsum(self.probabilities)
            return np.minimum(np.searchsorted(cumulative, u, side="right"), len(self.levels) - 1)
        n = len(self.sorted_values)
        present = (u - self.missing) / (1.0 - self.missing)
        values = np.interp(present * n - 0.5, np.arange(n), self.sorted_values)
        values = np.round(values, self.decimals)
        values[u < self.missing] = np.nan
        return values


@dataclass(frozen=True)
class ClassCopula:
    """The copula of one target class: its marginals and the Cholesky factor of R."""

    label: str
    share: float
    marginals: tuple[Marginal, ...]
    cholesky: np.ndarray


@dataclass(frozen=True)
class Synthesizer:
    """A fitted synthesizer: one :class:`ClassCopula` per target value, in source order.

    ``columns`` are the modelled columns (all but the target and ``drop``);
    ``output_columns`` is the source's column order without ``drop``.
    """

    target: str
    columns: tuple[str, ...]
    output_columns: tuple[str, ...]
    column_kinds: tuple[str, ...]
    integer_columns: frozenset[str]
    classes: tuple[ClassCopula, ...]

    def sample(self, n_rows: int, seed: int = 0) -> pd.DataFrame:
        """Draw ``n_rows`` new rows; the same seed gives the same rows.

        Each class gets its share of the rows (largest remainder, at least one
        row each), and the classes are interleaved in a seeded random order.

        Raises:
            DataError: ``n_rows`` smaller than the number of classes.

        """
        if n_rows < len(self.classes):
            raise DataError(
                f"a synthetic table needs at least {len(self.classes)} rows (one per class), "
                f"got {n_rows}"
            )
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        counts = _class_counts(n_rows, np.array([c.share for c in self.classes]))
        row_class = rng.permutation(np.repeat(np.arange(len(self.classes)), counts))
        in_class = [row_class == c for c in range(len(self.classes))]
        draws = [_draw(c, int(n), rng) for c, n in zip(self.classes, counts, strict=True)]
        labels = np.array([c.label for c in self.classes], dtype=object)
        data = {self.target: pd.Series(labels[row_class], dtype="str")}
        for j, column in enumerate(self.columns):
            data[column] = self._column(j, column, in_class, draws)
        return pd.DataFrame(data, columns=list(self.output_columns))

    def _column(
        self, j: int, column: str, in_class: list[np.ndarray], draws: list[list[np.ndarray]]
    ) -> pd.Series | np.ndarray:
        """Column ``j`` of the table: each class's draws put in its rows, as source values."""
        categorical = self.column_kinds[j] == "categorical"
        values = np.empty(len(in_class[0]), dtype=object if categorical else float)
        for rows, copula, drawn in zip(in_class, self.classes, draws, strict=True):
            marginal = copula.marginals[j]
            values[rows] = drawn[j] if marginal.kind == "continuous" else marginal.levels[drawn[j]]
        if categorical:
            return pd.Series(values, dtype="str")
        return values.astype(np.int64) if column in self.integer_columns else values


def _draw(copula: ClassCopula, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per column, ``n`` draws of one class: level indices, or numbers if continuous."""
    out: list[np.ndarray] = [
        np.empty(n) if m.kind == "continuous" else np.empty(n, dtype=np.int64)
        for m in copula.marginals
    ]
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, n)
        normals = rng.standard_normal((stop - start, len(copula.marginals)))
        uniforms = ndtr(normals @ copula.cholesky.T)
        for j, marginal in enumerate(copula.marginals):
            out[j][start:stop] = marginal.from_uniform(uniforms[:, j])
    return out


def fit_synthesizer(df: pd.DataFrame, contract: Contract, seed: int = 0) -> Synthesizer:
    """Fit one Gaussian copula per target class on ``df`` (every column but ``drop``).

    ``seed`` seeds the spreading of ties (a level's rows over its probability
    mass), so the same table and seed give the same synthesizer.

    Raises:
        DataError: The target column is missing or has missing values.

    """
    contract.labels(df)  # one-line error if the target is missing or has gaps
    target_text = canonical_strings(df[contract.target])
    output_columns = tuple(str(c) for c in df.columns if c not in contract.drop)
    columns = tuple(c for c in output_columns if c != contract.target)
    kinds = tuple(_column_kind(df[c], contract) for c in columns)
    integer_columns = frozenset(
        c for c in columns
        if pd.api.types.is_integer_dtype(df[c]) and not df[c].isna().any()
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    classes = []
    for label in pd.unique(target_text):
        rows = df[(target_text == label).to_numpy()]
        marginals = tuple(
            _fit_marginal(rows[c], kind, _levels(df[c], c, kind, contract))
            for c, kind in zip(columns, kinds, strict=True)
        )
        classes.append(ClassCopula(str(label), len(rows) / len(df), marginals,
                                   _fit_cholesky(rows, columns, marginals, rng)))
    return Synthesizer(contract.target, columns, output_columns, kinds, integer_columns,
                       tuple(classes))


@dataclass(frozen=True)
class SyntheticTable:
    """What :func:`synthesize_like` wrote."""

    data_path: Path
    contract_path: Path
    n_rows: int
    positive_label: str
    default_rate: float


def synthesize_like(name: str, n_rows: int, out_dir: str | Path, seed: int = 0) -> SyntheticTable:
    """Write ``OUT/data.parquet`` (``n_rows`` new rows like embedded ``name``) and its contract.

    The synthesizer is fitted on the embedded public table only; ``OUT/contract.toml``
    is that table's reviewed contract, which every synthetic table passes. The same
    name, row count and seed give the same bytes.

    Raises:
        DataError: Unknown dataset, fewer rows than classes, or ``out_dir`` is a file.

    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    df, contract = load_embedded(name)
    table = fit_synthesizer(df, contract, seed).sample(n_rows, seed)
    ensure_private_dir(out)
    data_path = write_table(table, out / DATA_FILENAME)
    contract_path = out / CONTRACT_FILENAME
    contract.save(contract_path)
    rate = float(contract.labels(table).mean())
    return SyntheticTable(data_path, contract_path, len(table), contract.positive_label, rate)


def _column_kind(column: pd.Series, contract: Contract) -> str:
    """``categorical`` (contract categories, the grade, text), ``discrete`` or ``continuous``."""
    if column.name in {f.name for f in contract.categorical} or column.name == contract.grade:
        return "categorical"
    if not pd.api.types.is_numeric_dtype(column):
        return "categorical"
    return "discrete" if column.nunique() <= DISCRETE_MAX_LEVELS else "continuous"


def _levels(column: pd.Series, name: str, kind: str, contract: Contract) -> np.ndarray:
    """Every level of a column over the whole table, in copula order."""
    if kind == "categorical":
        known = {f.name: f.categories for f in contract.categorical}.get(name, ())
        if name == contract.grade:
            known = contract.grade_levels
        seen = canonical_strings(column)
        extra = sorted(set(seen.dropna()) - set(known))
        levels = [*known, *extra] + ([None] if seen.isna().any() else [])
        return np.array(levels, dtype=object)
    values = np.unique(column.to_numpy(dtype=float, na_value=np.nan))  # NaN sorts last
    present = values[~np.isnan(values)]
    return np.concatenate(([np.nan], present)) if np.isnan(values).any() else present


def _fit_marginal(column: pd.Series, kind: str, levels: np.ndarray) -> Marginal:
    """A column's marginal within one class; ``levels`` span the whole table."""
    codes = _codes(column, kind, levels)
    probabilities = np.bincount(codes, minlength=len(levels)) / len(codes)
    if kind == "continuous":
        values = column.to_numpy(dtype=float, na_value=np.nan)
        present = np.sort(values[~np.isnan(values)])
        if len(present) >= 2:  # else: too few values in this class to interpolate
            missing = float(np.isnan(values).mean())
            return Marginal(kind, levels, probabilities, present, missing, _decimals(present))
        kind = "discrete"
    return Marginal(kind, levels, probabilities, np.empty(0), 0.0, 0)


def _codes(column: pd.Series, kind: str, levels: np.ndarray) -> np.ndarray:
    """Index of each value's level (numbers: missing is level 0 when the table has gaps)."""
    if kind == "categorical":
        index = {level: i for i, level in enumerate(levels)}
        return canonical_strings(column).map(index).to_numpy(dtype=np.int64)
    values = column.to_numpy(dtype=float, na_value=np.nan)
    codes = np.searchsorted(np.nan_to_num(levels, nan=-np.inf), values)
    codes[np.isnan(values)] = 0  # missing is the first level of a numeric column
    return codes


def _fit_cholesky(
    rows: pd.DataFrame, columns: tuple[str, ...], marginals: tuple[Marginal, ...],
    rng: np.random.Generator,
) -> np.ndarray:
    """Cholesky factor of the correlation of the class's normal scores."""
    scores = np.column_stack([
        ndtri(np.clip(m.to_uniform(_codes(rows[c], m.kind, m.levels), rng), 1e-12, 1 - 1e-12))
        for c, m in zip(columns, marginals, strict=True)
    ])
    correlation = np.atleast_2d(np.corrcoef(scores, rowvar=False))
    eigenvalues, vectors = np.linalg.eigh(correlation)
    repaired = (vectors * np.maximum(eigenvalues, _MIN_EIGENVALUE)) @ vectors.T
    scale = np.sqrt(np.diag(repaired))
    return np.linalg.cholesky(repaired / np.outer(scale, scale))


def _decimals(values: np.ndarray) -> int:
    """Fewest decimals that print every value exactly (integers: 0)."""
    for decimals in range(_MAX_DECIMALS + 1):
        if np.allclose(np.round(values, decimals), values, rtol=0, atol=1e-9):
            return decimals
    return _MAX_DECIMALS


def _class_counts(n_rows: int, shares: np.ndarray) -> np.ndarray:
    """Rows per class: largest remainder of ``n_rows * shares``, at least one each."""
    ideal = n_rows * shares
    counts = np.floor(ideal).astype(np.int64)
    for i in np.argsort(-(ideal - counts), kind="stable")[: n_rows - counts.sum()]:
        counts[i] += 1
    while (counts == 0).any():
        counts[np.argmax(counts)] -= 1
        counts[np.argmin(counts)] += 1
    return counts
