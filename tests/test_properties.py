"""Property-based tests: random tables against the embedded contracts and random contracts.

Whatever a data supplier sends, `data check` reports (one line per problem) and never
raises; scoring scores or rejects every row, or stops with one handled line, and writes
no cell a spreadsheet would run; encoding gives the same vector for the same row at every
bank, whatever else is in that bank's file and whether the file is CSV or Parquet.
"""

from __future__ import annotations

import csv
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrisk.data import (
    CategoricalFeature,
    Contract,
    DataError,
    NumericFeature,
    check_table,
    check_table_file,
    load_embedded,
    read_table,
)
from fedrisk.data.tables import CSV_LINE_END
from fedrisk.models import ModelSpec, build_model, model_arrays, save_model
from fedrisk.risk import score_applicants

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EMBEDDED = {name: load_embedded(name)[1] for name in ("lending_club", "credit_data")}
# pandas reads these CSV cells as missing values; Parquet keeps them as text.
CSV_MISSING_MARKERS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                       "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                       "nan", "null"}
HOSTILE_TEXT = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(1)", "\t=1", "\r=1", "a,b", 'q"q',
                "line\nbreak", "  ", "inf", "-inf", "NaN", "1e309", "0x10", "١٢", "€"]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=6)
finite = st.floats(-1e6, 1e6, allow_nan=False)


# ----- random contracts ---------------------------------------------------------------


@st.composite
def numeric_features(draw, name: str) -> NumericFeature:
    lower = draw(finite)
    upper = lower + draw(st.floats(0, 1e6))
    impute = draw(st.floats(lower, upper))
    return NumericFeature(name, lower, upper, center=draw(finite),
                          scale=draw(st.floats(1e-3, 1e6)), impute=impute,
                          out_of_range=draw(st.sampled_from(("clip", "error"))))


# Codes a CSV reader may take for numbers or booleans, depending on the rest of the column.
AMBIGUOUS = ["1", "1.0", "01", " 2", "2\t", "2", "-1", "+.5", "1e1", "Infinity", "-inf",
             "true", "True", "FALSE", "tRuE", " true", "١٢", "0x10", "a", "NA"]
category_values = st.one_of(st.sampled_from(AMBIGUOUS), text.filter(bool),
                            st.integers(-5, 5).map(str))


@st.composite
def contracts(draw) -> Contract:
    n_numeric, n_categorical = draw(st.integers(0, 3)), draw(st.integers(0, 2))
    columns = draw(st.lists(names, min_size=n_numeric + n_categorical + 3,
                            max_size=n_numeric + n_categorical + 3, unique=True))
    target, grade, protected, *features = columns
    numeric = [draw(numeric_features(n)) for n in features[:n_numeric]]
    vocabularies = [draw(st.lists(st.one_of(st.sampled_from(AMBIGUOUS), category_values),
                                  min_size=1, max_size=4, unique=True))
                    for _ in features[n_numeric:]]
    exposure = draw(st.sampled_from([None, *[f.name for f in numeric]]))
    has_grade = draw(st.booleans())
    try:
        categorical = [CategoricalFeature(n, tuple(v), draw(st.sampled_from(("bucket", "error"))))
                       for n, v in zip(features[n_numeric:], vocabularies, strict=True)]
        return Contract(
            name="random", target=target, positive_label=draw(category_values),
            numeric=tuple(numeric), categorical=tuple(categorical), drop=(),
            protected=(protected,), exposure=exposure, grade=grade if has_grade else None,
            grade_levels=tuple(draw(st.lists(category_values, min_size=1, max_size=3,
                                             unique=True))) if has_grade else (),
            prior_default_rate=draw(st.floats(0.01, 0.99)))
    except DataError:  # e.g. no model input, categories "1" and "1.0" (the same code)
        return EMBEDDED["credit_data"]


any_contract = st.one_of(st.sampled_from(list(EMBEDDED.values())), contracts())


# ----- random tables against a contract ---------------------------------------------------


def cell_values(contract: Contract, column: str, valid_only: bool) -> st.SearchStrategy:
    """What a supplier may put in a column: valid values, and hostile ones unless valid_only."""
    numeric = {f.name: f for f in contract.numeric}
    categorical = {f.name: f for f in contract.categorical}
    if column in numeric:
        feature = numeric[column]
        valid = st.one_of(st.floats(feature.lower, feature.upper), st.none())
        if feature.out_of_range == "clip":
            valid = st.one_of(valid, st.floats(allow_nan=True, allow_infinity=True))
    elif column in categorical:
        feature = categorical[column]
        valid = st.one_of(st.sampled_from(feature.categories), st.none())
        if feature.unknown == "bucket":
            valid = st.one_of(valid, st.sampled_from(AMBIGUOUS), category_values,
                              st.integers(-3, 3))
    elif column == contract.target:
        valid = st.sampled_from([contract.positive_label, "other"])
    elif column == contract.grade:
        valid = st.one_of(st.sampled_from(contract.grade_levels), st.none(), text)
    else:
        valid = text
    if valid_only:
        return valid
    return st.one_of(valid, text, st.sampled_from(HOSTILE_TEXT), st.floats(), st.integers(),
                     st.none())


@st.composite
def tables(draw, contract: Contract, valid_only: bool = False) -> pd.DataFrame:
    n_rows = draw(st.integers(0 if not valid_only else 2, 10))
    columns = list(contract.required_columns)
    if not valid_only:
        columns = [c for c in columns if draw(st.integers(0, 9))]  # sometimes one is missing
        columns += draw(st.lists(st.sampled_from(["extra", *HOSTILE_TEXT[:4], *columns[:2]]),
                                 max_size=2))  # extra columns, maybe repeating a name
    data = [[draw(cell_values(contract, c, valid_only)) for c in columns] for _ in range(n_rows)]
    return pd.DataFrame(data, columns=columns, dtype=object).infer_objects()


@st.composite
def contract_and_table(draw, valid_only: bool = False) -> tuple[Contract, pd.DataFrame]:
    contract = draw(any_contract)
    return contract, draw(tables(contract, valid_only))


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """A supplier's CSV (RFC 4180 rows), repeated column names included."""
    df.to_csv(path, index=False, lineterminator=CSV_LINE_END)
    return path


# ----- properties -----------------------------------------------------------------------

PUBLIC = re.compile(r"(column '.+'|a column|the table[^:]*): ?.*|the table .*")


@SETTINGS
@given(contract_and_table())
def test_data_check_reports_and_never_raises(case):
    contract, table = case
    with tempfile.TemporaryDirectory(prefix="hostile-check-") as folder:
        contract_path = Path(folder) / "contract.toml"
        contract.save(contract_path)
        assert Contract.load(contract_path) == contract  # every contract survives its file
        for report in (check_table(table, contract, "t.csv"),
                       check_table_file(write_csv(table, Path(folder) / "t.csv"), contract_path)):
            for message in report.errors + report.warnings:
                assert "\n" not in message.strip() and message.startswith(("t.csv", folder))
            assert len(report.public_errors) == len(report.errors)
            for public in report.public_errors:
                assert PUBLIC.fullmatch(public), public
                named = re.findall(r"column '(.+?)'", public)
                assert all(n in contract.required_columns for n in named), public


@SETTINGS
@given(st.data())
def test_encoding_is_the_same_at_every_bank(data):
    contract = data.draw(st.one_of(any_contract, contracts(), contracts()))
    table = data.draw(tables(contract, valid_only=True))
    report = check_table(table, contract)
    if not report.ok:
        return
    bank_of_row = data.draw(st.lists(st.integers(0, 2), min_size=len(table),
                                     max_size=len(table)))
    with tempfile.TemporaryDirectory(prefix="hostile-banks-") as folder:
        whole = contract.encode(read_table(write_csv(table, Path(folder) / "all.csv")))
        assert whole.dtype == np.float32 and whole.shape == (len(table), contract.n_features)
        assert np.isfinite(whole).all()
        for bank in set(bank_of_row):
            rows = [i for i, b in enumerate(bank_of_row) if b == bank]
            own = table.iloc[rows]
            from_csv = contract.encode(read_table(write_csv(own, Path(folder) / f"{bank}.csv")))
            np.testing.assert_array_equal(from_csv, whole[rows])
            if not _has_csv_missing_markers(own):
                own.astype(str).where(own.notna()).to_parquet(Path(folder) / f"{bank}.parquet")
                from_parquet = contract.encode(read_table(Path(folder) / f"{bank}.parquet"))
                np.testing.assert_array_equal(from_parquet, from_csv)


@SETTINGS
@given(contract_and_table())
def test_scoring_scores_or_rejects_every_row_or_stops_with_one_line(case):
    contract, table = case
    table = table.drop(columns=[contract.target], errors="ignore")
    with tempfile.TemporaryDirectory(prefix="hostile-score-") as folder:
        run_dir = _run_dir(Path(folder), contract)
        applicants = write_csv(table.assign(applicant_id=[f"=A{i}" for i in range(len(table))])
                               if "applicant_id" not in table.columns else table,
                               Path(folder) / "applicants.csv")
        try:
            result = score_applicants(run_dir, applicants, Path(folder) / "scores.csv",
                                      n_reasons=2)
        except DataError as error:
            assert "\n" not in str(error).strip()
            return
        assert result.n_scored + result.n_rejected == result.n_applicants == len(table)
        if "expected_loss" in result.scores:
            assert np.isfinite(result.scores["expected_loss"]).all()
        for path in (result.output_path, result.rejects_path):
            with open(path, newline="", encoding="utf-8") as handle:
                cells = [cell for row in csv.reader(handle) for cell in row]
            assert not [c for c in cells if _runnable(c)], path


def _run_dir(folder: Path, contract: Contract) -> Path:
    spec = ModelSpec("mlp", contract.n_features, (4,), contract.prior_default_rate,
                     len(contract.grade_levels) if contract.grade else 0)
    save_model(folder / "model.safetensors", spec, model_arrays(build_model(spec)))
    contract.save((folder / "data").mkdir() or folder / "data" / "contract.toml")
    return folder


def _has_csv_missing_markers(df: pd.DataFrame) -> bool:
    return bool(df.map(lambda v: isinstance(v, str) and v.strip() in CSV_MISSING_MARKERS)
                .to_numpy().any())


def _runnable(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    return False


@SETTINGS
@given(st.lists(st.sampled_from(AMBIGUOUS), min_size=1, max_size=4, unique=True),
       st.sampled_from(AMBIGUOUS), st.lists(st.one_of(st.sampled_from(AMBIGUOUS), text),
                                            min_size=1, max_size=4))
def test_a_code_encodes_the_same_whatever_else_its_banks_column_holds(categories, value,
                                                                      neighbours):
    """A CSV reader reads a column as numbers or as text depending on all of its cells: the
    same code ("1.0", "01", "true") must land in the same slot either way."""
    try:
        contract = Contract(name="codes", target="t", positive_label="y", numeric=(),
                            categorical=(CategoricalFeature("code", tuple(categories)),),
                            drop=(), protected=())
    except DataError:  # two categories that are the same number ("1" and "1.0")
        return
    encodings = []
    with tempfile.TemporaryDirectory(prefix="hostile-codes-") as folder:
        for bank, others in enumerate(([value] * len(neighbours), neighbours)):
            table = pd.DataFrame({"t": ["y", *["n"] * len(others)], "code": [value, *others]})
            encoded = contract.encode(read_table(write_csv(table, Path(folder) / f"{bank}.csv")))
            encodings.append(encoded[0])
    np.testing.assert_array_equal(encodings[0], encodings[1])
