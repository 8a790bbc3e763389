"""The data contract banks agree on: columns, policies and the shared encoding.

A contract is the only thing banks exchange about their data. Every bank
encodes its rows with the contract alone, so the same row encodes to the same
vector at every bank, without any bank seeing another's rows.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrisk.data.errors import DataError, first_line
from fedrisk.data.values import (
    canonical_strings,
    comparable_strings,
    comparable_text,
    examples,
    has_control_character,
    looks_like_number_or_boolean,
    to_float,
    value_text,
)

UNKNOWN_CATEGORY = "__unknown__"
DRAFT_HEADER = "Drafted from one bank's table: review before sharing"
OUT_OF_RANGE_POLICIES = ("clip", "error")
UNKNOWN_POLICIES = ("bucket", "error")
_FINGERPRINT_VERSION = b"fedrisk-fingerprint-v1\n"


@dataclass(frozen=True)
class NumericFeature:
    """A numeric column: clip bounds, standardization and imputation value.

    Encoding: clip to ``[lower, upper]`` (or refuse, if ``out_of_range`` is
    ``"error"``), replace missing values with ``impute``, then
    ``(x - center) / scale``.
    """

    name: str
    lower: float
    upper: float
    center: float
    scale: float
    impute: float
    out_of_range: str = "clip"

    def __post_init__(self) -> None:
        _check_name(self.name, "numeric feature")
        for attr in ("lower", "upper", "center", "scale", "impute"):
            object.__setattr__(self, attr, _as_float(getattr(self, attr), self._where(attr)))
        problem = self._problem()
        if problem:
            raise DataError(f"numeric feature '{self.name}': {problem}")

    def _where(self, attr: str) -> str:
        return f"numeric feature '{self.name}': {attr}"

    def _problem(self) -> str | None:
        values = (self.lower, self.upper, self.center, self.scale, self.impute)
        if not all(np.isfinite(values)):
            return "lower, upper, center, scale and impute must be finite numbers"
        if self.lower > self.upper:
            return f"lower ({self.lower:g}) is above upper ({self.upper:g})"
        if self.scale <= 0:
            return f"scale must be positive, got {self.scale:g}"
        if not self.lower <= self.impute <= self.upper:
            return f"impute ({self.impute:g}) is outside [{self.lower:g}, {self.upper:g}]"
        if self.out_of_range not in OUT_OF_RANGE_POLICIES:
            return f"out_of_range must be one of {', '.join(OUT_OF_RANGE_POLICIES)}"
        return None


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical column: its vocabulary and what to do with unseen values.

    Encoding: one-hot over ``categories`` plus an unknown slot (values not in
    the vocabulary, if ``unknown`` is ``"bucket"``) and a missing slot.
    """

    name: str
    categories: tuple[str, ...]
    unknown: str = "bucket"

    def __post_init__(self) -> None:
        _check_name(self.name, "categorical feature")
        if not isinstance(self.categories, list | tuple):
            raise DataError(f"categorical feature '{self.name}': categories must be a list")
        object.__setattr__(self, "categories", tuple(value_text(c) for c in self.categories))
        duplicates = _duplicates(comparable_text(c) for c in self.categories)
        if duplicates:
            raise DataError(
                f"categorical feature '{self.name}': category '{duplicates[0]}' is listed twice "
                "(a CSV file cannot tell apart codes such as '1', '1.0' and '01')"
            )
        if self.unknown not in UNKNOWN_POLICIES:
            raise DataError(
                f"categorical feature '{self.name}': unknown must be one of "
                f"{', '.join(UNKNOWN_POLICIES)}"
            )


@dataclass(frozen=True)
class Contract:
    """What every bank's table must contain and how every bank encodes it.

    Protected attributes are required columns kept for fairness audits. A
    protected column may carry a numeric or categorical spec (so it is
    validated), but it is a model input only if listed in ``use_as_feature``.
    The grade column is never a model input. ``drafted`` marks a contract
    produced by :func:`draft_contract` that nobody has reviewed yet.
    ``prior_default_rate`` is the consortium's agreed, public prior of default
    (e.g. a published portfolio default rate); it only sets the model's initial
    output bias so that early DP-SGD steps are spent on ranking, not on the base rate.
    """

    name: str
    target: str
    positive_label: str
    numeric: tuple[NumericFeature, ...]
    categorical: tuple[CategoricalFeature, ...]
    drop: tuple[str, ...]
    protected: tuple[str, ...]
    grade: str | None = None
    grade_levels: tuple[str, ...] = ()
    exposure: str | None = None
    risk_band_edges: tuple[float, ...] = (0.02, 0.05, 0.10, 0.20)
    prior_default_rate: float = 0.5
    missing_categorical: str = "__missing__"
    use_as_feature: tuple[str, ...] = ()
    drafted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "positive_label", value_text(self.positive_label))
        for attr in ("numeric", "categorical", "drop", "protected", "use_as_feature"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        for attr, kind in (("numeric", NumericFeature), ("categorical", CategoricalFeature)):
            if not all(isinstance(f, kind) for f in getattr(self, attr)):
                raise DataError(f"contract '{self.name}': {attr} must hold {kind.__name__} specs")
        object.__setattr__(self, "grade_levels", tuple(value_text(g) for g in self.grade_levels))
        edges = tuple(_as_float(e, "risk_band_edges") for e in self.risk_band_edges)
        object.__setattr__(self, "risk_band_edges", edges)
        object.__setattr__(self, "prior_default_rate",
                           _as_float(self.prior_default_rate, "prior_default_rate"))
        problems = _contract_problems(self)
        if problems:
            n_more = len(problems) - 1
            more = f" (and {n_more} more problem{'s' if n_more > 1 else ''})" if n_more else ""
            raise DataError(f"contract '{self.name}': {problems[0]}{more}")

    # ----- columns -------------------------------------------------------------

    @property
    def numeric_inputs(self) -> tuple[NumericFeature, ...]:
        """Numeric features that are model inputs (protected ones only if opted in)."""
        return tuple(f for f in self.numeric if self._is_input(f.name))

    @property
    def categorical_inputs(self) -> tuple[CategoricalFeature, ...]:
        """Categorical features that are model inputs (protected ones only if opted in)."""
        return tuple(f for f in self.categorical if self._is_input(f.name))

    @property
    def input_columns(self) -> list[str]:
        """Raw table columns the encoding reads, in encoding order."""
        return [f.name for f in self.numeric_inputs] + [f.name for f in self.categorical_inputs]

    @property
    def required_columns(self) -> list[str]:
        """Every column a bank's table must have (all but ``drop`` and extras)."""
        names = [self.target, *(f.name for f in self.numeric)]
        names += [f.name for f in self.categorical]
        names += [*self.protected, *(c for c in (self.grade, self.exposure) if c)]
        return list(dict.fromkeys(names))

    @property
    def feature_names(self) -> list[str]:
        """Names of the encoded vector's columns, in order.

        Numeric inputs first, then for each categorical input ``name=category``
        for each category, ``name=__unknown__`` and ``name=<missing bucket>``.
        """
        names = [f.name for f in self.numeric_inputs]
        for feature in self.categorical_inputs:
            slots = (*feature.categories, UNKNOWN_CATEGORY, self.missing_categorical)
            names += [f"{feature.name}={slot}" for slot in slots]
        return names

    @property
    def n_features(self) -> int:
        """Width of the encoded vector."""
        return len(self.numeric_inputs) + sum(
            len(f.categories) + 2 for f in self.categorical_inputs
        )

    def _is_input(self, column: str) -> bool:
        return column not in self.protected or column in self.use_as_feature

    # ----- encoding ------------------------------------------------------------

    def encode(self, df: pd.DataFrame, *, source: str = "table") -> np.ndarray:
        """Encode rows into model inputs; the result depends only on the contract and each row.

        Args:
            df: A bank's table; column order and extra columns do not matter.
            source: Name of the table in error messages (usually its file).

        Returns:
            A float32 array of shape ``(len(df), n_features)``.

        Raises:
            DataError: A required column is missing, a numeric column holds
                non-numbers, or a value breaks an ``"error"`` policy.

        """
        _require_columns(df, self.input_columns, source)
        blocks = [self._encode_numeric(df[f.name], f, source) for f in self.numeric_inputs]
        blocks += [self._encode_categorical(df[f.name], f, source) for f in self.categorical_inputs]
        if not blocks:
            return np.zeros((len(df), 0), dtype=np.float32)
        return np.column_stack(blocks).astype(np.float32)

    def _encode_numeric(
        self, column: pd.Series, feature: NumericFeature, source: str
    ) -> np.ndarray:
        values = parse_numeric(column, source)
        outside = (values < feature.lower) | (values > feature.upper)
        if feature.out_of_range == "error" and outside.any():
            raise DataError(
                f"{source}: column '{feature.name}': {int(outside.sum())} values outside "
                f'[{feature.lower:g}, {feature.upper:g}] (policy out_of_range = "error")'
            )
        clipped = np.clip(values, feature.lower, feature.upper)
        filled = np.where(np.isnan(clipped), feature.impute, clipped)
        return (filled - feature.center) / feature.scale

    def _encode_categorical(
        self, column: pd.Series, feature: CategoricalFeature, source: str
    ) -> np.ndarray:
        codes = self.category_codes(column, feature)
        n_known = len(feature.categories)
        unseen = codes == n_known
        if feature.unknown == "error" and unseen.any():
            raise DataError(
                f"{source}: column '{feature.name}': {int(unseen.sum())} values not in the "
                f"contract's categories, such as {examples(column[unseen])} "
                f'(policy unknown = "error")'
            )
        one_hot = np.zeros((len(column), n_known + 2), dtype=np.float32)
        one_hot[np.arange(len(column)), codes] = 1.0
        return one_hot

    def category_codes(self, column: pd.Series, feature: CategoricalFeature) -> np.ndarray:
        """Slot index of each value: its category, then unknown, then missing."""
        n_known = len(feature.categories)
        comparable = [comparable_text(c) for c in feature.categories]
        if isinstance(column.dtype, pd.StringDtype):
            # A text value is its own canonical string: a hash lookup, no per-value Python
            # except for the few texts that read as numbers or booleans.
            codes_of = looks_like_number_or_boolean(column)
            if codes_of.any():
                column = column.copy()
                column[codes_of] = [comparable_text(v) for v in column[codes_of]]
            vocabulary = pd.Index(comparable, dtype=column.dtype)
            codes = vocabulary.get_indexer(column).astype(np.int64)
            codes[codes < 0] = n_known
            codes[column.isna().to_numpy()] = n_known + 1
            return codes
        index = {category: i for i, category in enumerate(comparable)}
        strings = comparable_strings(column)
        codes = strings.map(lambda v: n_known + 1 if v is None else index.get(v, n_known))
        return codes.to_numpy(dtype=np.int64)

    def labels(self, df: pd.DataFrame, *, source: str = "table") -> np.ndarray:
        """Return 1.0 where the target equals ``positive_label`` (as a string), else 0.0.

        Raises:
            DataError: The target column is missing or has missing values.

        """
        _require_columns(df, [self.target], source)
        strings = comparable_strings(df[self.target])
        missing = int(strings.isna().sum())
        if missing:
            raise DataError(
                f"{source}: column '{self.target}': target value missing ({missing} rows)"
            )
        return (strings == comparable_text(self.positive_label)).to_numpy(dtype=np.float32)

    def grades(self, df: pd.DataFrame, *, source: str = "table") -> np.ndarray:
        """Index of each row's grade in ``grade_levels`` (-1 if missing or unknown).

        Raises:
            DataError: The contract has no grade column, or the table lacks it.

        """
        if self.grade is None:
            raise DataError(f"contract '{self.name}' has no grade column")
        _require_columns(df, [self.grade], source)
        index = {comparable_text(level): i for i, level in enumerate(self.grade_levels)}
        strings = comparable_strings(df[self.grade])
        return strings.map(lambda v: index.get(v, -1)).to_numpy(dtype=np.int64)

    @property
    def band_labels(self) -> tuple[str, ...]:
        """Risk band names, best first: ``A``, ``B``, ... (one more than the edges)."""
        return tuple(chr(ord("A") + i) for i in range(len(self.risk_band_edges) + 1))

    def risk_bands(self, probabilities: Sequence[float] | np.ndarray) -> np.ndarray:
        """Map probabilities of default to band names using ``risk_band_edges``.

        A probability equal to an edge falls in the worse band.
        """
        positions = np.searchsorted(self.risk_band_edges, np.asarray(probabilities), side="right")
        return np.asarray(self.band_labels, dtype=object)[positions]

    def fingerprint(self, df: pd.DataFrame, *, source: str = "table") -> str:
        """SHA-256 of the table's content restricted to the contract's columns.

        Independent of column order, extra and dropped columns, and of the
        storage format (CSV or Parquet); row order matters. Used to key a bank's
        lifetime privacy budget on "this data".
        """
        columns = sorted(self.required_columns)
        _require_columns(df, columns, source)
        digest = hashlib.sha256(_FINGERPRINT_VERSION)
        digest.update(f"{len(df)}\n".encode())
        for column in columns:
            strings = canonical_strings(df[column])
            digest.update(column.encode() + b"\x1e")
            digest.update("\x1f".join("\x00" if v is None else v for v in strings).encode())
            digest.update(b"\x1d")
        return digest.hexdigest()

    # ----- persistence ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists, strings and numbers (``None`` for unset optional columns)."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("numeric", "categorical"):
                value = [_feature_dict(f) for f in value]
            elif isinstance(value, tuple):
                value = list(value)
            data[item.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contract:
        """Build a contract from :meth:`to_dict` output or parsed TOML.

        Raises:
            DataError: Unknown or missing keys, wrong types or inconsistent roles.

        """
        return _contract_from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Contract:
        """Read a contract from a TOML file.

        Raises:
            DataError: One line naming the file: unreadable, not TOML, or invalid.

        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: contract file not found") from None
        except IsADirectoryError:
            raise DataError(f"{path}: is a directory, expected a contract .toml file") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: contract is not UTF-8 text") from None
        except OSError as error:
            raise DataError(f"{path}: cannot read contract ({error.strerror})") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise DataError(f"{path}: contract is not valid TOML: {first_line(error)}") from None
        try:
            return _contract_from_dict(data)
        except DataError as error:
            raise DataError(f"{path}: {error}") from None

    def save(self, path: str | Path) -> None:
        """Write the contract as TOML; a drafted contract gets a review warning header."""
        data = {k: v for k, v in self.to_dict().items() if v is not None}
        header = ""
        if self.drafted:
            header = (
                f"# {DRAFT_HEADER}.\n"
                "# Bounds, medians and category lists below describe that bank's customers:\n"
                "# widen or round them, then set drafted = false.\n\n"
            )
        Path(path).write_text(header + _toml_text(data), encoding="utf-8")


# ----- helpers -----------------------------------------------------------------


def parse_numeric(column: pd.Series, source: str = "table") -> np.ndarray:
    """Parse a numeric column as float64, refusing values that are not numbers.

    Raises:
        DataError: Some present values are not numbers (names column and count).

    """
    values, non_numeric = to_float(column)
    if non_numeric.any():
        raise DataError(
            f"{source}: column '{column.name}': {int(non_numeric.sum())} non-numeric values, "
            f"such as {examples(column[non_numeric])}"
        )
    return values


def _require_columns(df: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{source}: column '{missing[0]}' is missing (required by contract)")
    repeated = [c for c in columns if (df.columns == c).sum() > 1]
    if repeated:
        raise DataError(f"{source}: column '{repeated[0]}' appears more than once")


def _feature_dict(feature: NumericFeature | CategoricalFeature) -> dict[str, Any]:
    data = asdict(feature)
    if "categories" in data:
        data["categories"] = list(data["categories"])
    return data


def _duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    return [n for n in names if n in seen or seen.add(n)]


def _check_name(name: Any, kind: str) -> None:
    if not isinstance(name, str) or not name:
        raise DataError(f"{kind} name must be a non-empty string, got {name!r}")


def _as_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise DataError(f"{where} must be a number, got {value!r}")
    return float(value)


def _contract_problems(contract: Contract) -> list[str]:
    """Everything inconsistent about a contract's roles, as short phrases."""
    problems = []
    for attr in ("name", "target", "positive_label", "missing_categorical"):
        if not isinstance(getattr(contract, attr), str) or not getattr(contract, attr):
            problems.append(f"{attr} must be a non-empty string")
    problems += [f"column name {n!r} has a control character (names must print on one line)"
                 for n in (*contract.required_columns, *contract.drop)
                 if isinstance(n, str) and has_control_character(n)]
    if has_control_character(contract.positive_label):
        problems.append(f"positive_label {contract.positive_label!r} has a control character")
    feature_names = [f.name for f in contract.numeric] + [f.name for f in contract.categorical]
    problems += [f"column '{n}' has two feature specs" for n in _duplicates(feature_names)]
    if contract.target in feature_names:
        problems.append(f"target '{contract.target}' cannot also be a feature")
    if contract.grade and contract.grade in feature_names + [contract.target]:
        problems.append(f"grade column '{contract.grade}' cannot be a feature or the target")
    overlap = sorted(set(contract.drop) & set(contract.required_columns))
    problems += [f"column '{n}' is both dropped and required" for n in overlap]
    problems += _protected_problems(contract, feature_names)
    problems += _grade_problems(contract)
    if contract.exposure and contract.exposure not in {f.name for f in contract.numeric}:
        problems.append(f"exposure column '{contract.exposure}' must be a numeric feature")
    if not 0 < contract.prior_default_rate < 1:
        problems.append("prior_default_rate must be a probability between 0 and 1")
    edges = contract.risk_band_edges
    if not all(0 < e < 1 for e in edges) or list(edges) != sorted(set(edges)):
        problems.append("risk_band_edges must be increasing probabilities between 0 and 1")
    reserved = {UNKNOWN_CATEGORY, contract.missing_categorical}
    for feature in contract.categorical:
        problems += [
            f"categorical feature '{feature.name}': category '{c}' is a reserved slot name"
            for c in feature.categories
            if c in reserved
        ]
    if not contract.input_columns and not problems:
        problems.append("no model inputs: add numeric or categorical features")
    return problems


def _protected_problems(contract: Contract, feature_names: list[str]) -> list[str]:
    problems = [
        f"use_as_feature column '{n}' must also be listed in protected"
        for n in contract.use_as_feature
        if n not in contract.protected
    ]
    problems += [
        f"use_as_feature column '{n}' needs a numeric or categorical spec"
        for n in contract.use_as_feature
        if n not in feature_names
    ]
    if contract.target in contract.protected:
        problems.append(f"target '{contract.target}' cannot be protected")
    return problems


def _grade_problems(contract: Contract) -> list[str]:
    if contract.grade is None:
        return ["grade_levels given but no grade column"] if contract.grade_levels else []
    problems = [] if len(contract.grade_levels) > 1 else [
        f"grade '{contract.grade}' needs at least two grade_levels (a grade head tells them apart)"]
    problems += [f"grade level '{g}' is listed twice" for g in _duplicates(
        comparable_text(level) for level in contract.grade_levels)]
    return problems


# ----- from dict / TOML ----------------------------------------------------------

_TOML_WIDTH = 96


def _toml_text(data: Mapping[str, Any]) -> str:
    """Write the contract's dict as TOML: plain keys, then arrays of tables.

    A small writer instead of a TOML library: the contract only holds strings,
    numbers, booleans and lists of them, and short lists stay on one line,
    which keeps vocabularies readable in review.
    """
    tables = {k: v for k, v in data.items() if k in ("numeric", "categorical")}
    lines = [_toml_line(k, v) for k, v in data.items() if k not in tables]
    for key, entries in tables.items():
        for entry in entries:
            lines += ["", f"[[{key}]]"] + [_toml_line(k, v) for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def _toml_line(key: str, value: Any) -> str:
    if not isinstance(value, list | tuple):
        return f"{key} = {_toml_value(value)}"
    items = [_toml_value(v) for v in value]
    one_line = f"{key} = [{', '.join(items)}]"
    if len(one_line) <= _TOML_WIDTH:
        return one_line
    rows, row = [], ""
    for item in items:
        if row and len(row) + len(item) + 2 > _TOML_WIDTH - 4:
            rows.append(row)
            row = ""
        row += f"{item}, "
    rows.append(row)
    return f"{key} = [\n" + "".join(f"    {r.rstrip()}\n" for r in rows) + "]"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    # A JSON string literal is a valid TOML basic string.
    return json.dumps(str(value), ensure_ascii=False)


_REQUIRED_KEYS = ("name", "target", "positive_label")
_STRING_LISTS = ("drop", "protected", "grade_levels", "use_as_feature")


def _contract_from_dict(data: Mapping[str, Any]) -> Contract:
    """Validate keys and types of a parsed contract, then build it."""
    if not isinstance(data, Mapping):
        raise DataError("contract must be a table of keys")
    known = {f.name for f in fields(Contract)}
    _check_keys(data, known, _REQUIRED_KEYS, "contract")
    values: dict[str, Any] = {k: v for k, v in data.items() if v is not None}
    values.setdefault("numeric", [])
    values.setdefault("categorical", [])
    values.setdefault("drop", [])
    values.setdefault("protected", [])
    for key in _STRING_LISTS:
        if key in values:
            values[key] = _string_list(values[key], key)
    for key in ("name", "target", "grade", "exposure", "missing_categorical"):
        if key in values and not isinstance(values[key], str):
            raise DataError(f"contract: {key} must be a string, got {values[key]!r}")
    if "drafted" in values and not isinstance(values["drafted"], bool):
        raise DataError("contract: drafted must be true or false")
    if "risk_band_edges" in values and not isinstance(values["risk_band_edges"], list | tuple):
        raise DataError("contract: risk_band_edges must be a list of numbers")
    values["numeric"] = tuple(
        _numeric_from_dict(d) for d in _table_list(values["numeric"], "numeric")
    )
    values["categorical"] = tuple(
        _categorical_from_dict(d) for d in _table_list(values["categorical"], "categorical")
    )
    return Contract(**values)


def _check_keys(
    data: Mapping[str, Any], known: set[str], required: Iterable[str], where: str
) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise DataError(
            f"{where}: unknown key '{unknown[0]}' (known keys: {', '.join(sorted(known))})"
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise DataError(f"{where}: required key '{missing[0]}' is missing")


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise DataError(f"contract: {key} must be a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def _table_list(value: Any, key: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, Mapping) for v in value):
        raise DataError(f"contract: {key} must be a list of tables ([[{key}]] in TOML)")
    return list(value)


def _numeric_from_dict(data: Mapping[str, Any]) -> NumericFeature:
    where = f"numeric feature '{data.get('name', '?')}'"
    known = {f.name for f in fields(NumericFeature)}
    _check_keys(data, known, ("name", "lower", "upper", "center", "scale", "impute"), where)
    return NumericFeature(**data)


def _categorical_from_dict(data: Mapping[str, Any]) -> CategoricalFeature:
    where = f"categorical feature '{data.get('name', '?')}'"
    _check_keys(data, {f.name for f in fields(CategoricalFeature)}, ("name", "categories"), where)
    return CategoricalFeature(**data)
