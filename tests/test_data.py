"""Tests of fedrisk.data: contracts, encoding, checks, tables, splits, embedded data."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fedrisk.data import (
    EMBEDDED_DATASETS,
    UNKNOWN_CATEGORY,
    CategoricalFeature,
    Contract,
    DataError,
    NumericFeature,
    check_table,
    check_table_file,
    draft_contract,
    embedded_banks,
    load_embedded,
    read_table,
    split_table,
    split_table_file,
    stratified_split,
)

ROW_COUNT = re.compile(r"\(\d[\d,]* rows?\)")


# ----- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def credit() -> tuple[pd.DataFrame, Contract]:
    return load_embedded("credit_data")


@pytest.fixture(scope="module")
def lending() -> tuple[pd.DataFrame, Contract]:
    return load_embedded("lending_club")


@pytest.fixture(scope="module")
def lending_banks() -> dict[str, pd.DataFrame]:
    return embedded_banks("lending_club")


def small_contract(out_of_range: str = "clip", unknown: str = "bucket") -> Contract:
    return Contract(
        name="small",
        target="default",
        positive_label="yes",
        numeric=(NumericFeature("income", 0, 1000, 500, 100, 400, out_of_range=out_of_range),),
        categorical=(CategoricalFeature("region", ("north", "south"), unknown=unknown),),
        drop=("id",),
        protected=(),
    )


def small_table(n_rows: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(n_rows),
            "income": np.linspace(100, 900, n_rows),
            "region": ["north", "south"] * (n_rows // 2),
            "default": ["yes", "no", "no", "no"] * (n_rows // 4),
        }
    )


def assert_one_line_with_count(message: str, column: str | None = None) -> None:
    assert "\n" not in message
    assert ROW_COUNT.search(message), message
    if column is not None:
        assert f"'{column}'" in message, message


# ----- encoding ---------------------------------------------------------------------


def test_same_row_encodes_identically_in_different_banks(credit, tmp_path):
    df, contract = credit
    row = df.iloc[[17]]
    bank_a = pd.concat([df.iloc[:300], row])
    bank_b = pd.concat([row, df.iloc[3000:3040]])
    bank_b = bank_b[list(reversed(bank_b.columns))]  # different column order
    bank_b.to_csv(tmp_path / "b.csv", index=False)  # and a different storage round trip
    bank_b = read_table(tmp_path / "b.csv")
    encoded_a = contract.encode(bank_a)[-1]
    encoded_b = contract.encode(bank_b)[0]
    np.testing.assert_array_equal(encoded_a, encoded_b)
    assert contract.encode(bank_a).shape == (301, contract.n_features)
    assert contract.encode(bank_a).dtype == np.float32


def test_unseen_category_goes_to_unknown_slot_and_nan_is_imputed():
    contract = small_contract()
    df = pd.DataFrame(
        {"income": [np.nan, 5000.0], "region": ["east", None], "default": ["no", "yes"]}
    )
    encoded = contract.encode(df)
    names = contract.feature_names
    assert names == [
        "income",
        "region=north",
        "region=south",
        f"region={UNKNOWN_CATEGORY}",
        "region=__missing__",
    ]
    assert encoded[0, 0] == pytest.approx((400 - 500) / 100)  # imputed
    assert encoded[1, 0] == pytest.approx((1000 - 500) / 100)  # clipped to upper
    assert encoded[0, names.index(f"region={UNKNOWN_CATEGORY}")] == 1.0
    assert encoded[1, names.index("region=__missing__")] == 1.0
    assert encoded[:, 1:].sum(axis=1).tolist() == [1.0, 1.0]


def test_error_policies_refuse_to_encode():
    df = pd.DataFrame({"income": [5000.0], "region": ["east"], "default": ["no"]})
    with pytest.raises(DataError, match="'income'"):
        small_contract(out_of_range="error").encode(df)
    with pytest.raises(DataError, match="'region'"):
        small_contract(unknown="error").encode(df.assign(income=1.0))


def test_protected_columns_are_not_inputs_unless_opted_in(credit):
    _, contract = credit
    assert "Age" not in contract.input_columns and "Marital" not in contract.input_columns
    assert not any(name.startswith("Marital=") for name in contract.feature_names)
    opted_in = dataclasses.replace(contract, use_as_feature=("Age",))
    assert "Age" in opted_in.input_columns
    assert opted_in.n_features == contract.n_features + 1


def test_labels_and_grades(lending):
    df, contract = lending
    labels = contract.labels(df)
    assert labels.dtype == np.float32 and labels.sum() == (df["Class"] == "bad").sum()
    grades = contract.grades(pd.DataFrame({"sub_grade": ["A1", "G5", "Z9", None]}))
    assert grades.tolist() == [0, 34, -1, -1]
    assert contract.risk_bands([0.01, 0.02, 0.5]).tolist() == ["A", "B", "E"]


def test_fingerprint_ignores_column_order_and_extra_columns_but_not_values(credit):
    df, contract = credit
    reordered = df[list(reversed(df.columns))].assign(extra=1)
    assert contract.fingerprint(df) == contract.fingerprint(reordered)
    changed = df.copy()
    changed.loc[0, "Income"] = 1.0
    assert contract.fingerprint(df) != contract.fingerprint(changed)


# ----- contracts --------------------------------------------------------------------


@pytest.mark.parametrize("name", EMBEDDED_DATASETS)
def test_contract_round_trips_through_toml(name, tmp_path):
    _, contract = load_embedded(name)
    contract.save(tmp_path / "c.toml")
    assert Contract.load(tmp_path / "c.toml") == contract
    assert Contract.from_dict(contract.to_dict()) == contract


def test_drafted_contract_round_trips_with_review_header(credit, tmp_path):
    df, _ = credit
    drafted = draft_contract(df, "Status", "bad", protected=("Age", "Marital"), exposure="Amount")
    drafted.save(tmp_path / "draft.toml")
    text = (tmp_path / "draft.toml").read_text()
    assert text.startswith("# Drafted from one bank's table: review before sharing")
    assert Contract.load(tmp_path / "draft.toml") == drafted


def test_draft_contract_roles(lending):
    df, _ = lending
    contract = draft_contract(df, "Class", "bad", protected=("addr_state",), grade="sub_grade")
    assert contract.drop == ("rownames",)
    assert contract.grade_levels[0] == "A1" and contract.grade_levels[-1] == "G5"
    assert "sub_grade" not in contract.input_columns
    assert "addr_state" in contract.protected and "addr_state" not in contract.input_columns
    for feature in contract.numeric:
        assert feature.lower <= feature.impute <= feature.upper and feature.scale > 0
    with pytest.raises(DataError, match="'missing_col'"):
        draft_contract(df, "missing_col", "bad")
    with pytest.raises(DataError, match="never occurs"):
        draft_contract(df, "Class", "ugly")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found"),
        ("name = ", "not valid TOML"),
        ('name = "x"\ntarget = "y"\npositive_label = "1"\ncolour = 1\n', "unknown key 'colour'"),
        (
            'name = "x"\ntarget = "y"\npositive_label = "1"\n'
            '[[numeric]]\nname = "a"\nlower = 5\nupper = 1\ncenter = 0\nscale = 1\nimpute = 1\n',
            "lower (5) is above upper (1)",
        ),
    ],
)
def test_invalid_contract_is_one_line_naming_the_file(content, expected, tmp_path):
    path = tmp_path / "contract.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as raised:
        Contract.load(path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and expected in message, message


# ----- checks -----------------------------------------------------------------------


def test_valid_table_passes():
    report = check_table(small_table(), small_contract(), source="bank.csv")
    assert report.ok and report.errors == [] and report.n_rows == 20


@pytest.mark.parametrize(
    ("kind", "make_table", "contract", "column", "needle"),
    [
        (
            "missing column",
            lambda t: t.drop(columns="income"),
            small_contract(),
            "income",
            "missing",
        ),
        (
            "wrong type",
            lambda t: t.astype({"income": object}).assign(income=["abc", *t.income[1:]]),
            small_contract(),
            "income",
            "non-numeric",
        ),
        (
            "out of range, policy error",
            lambda t: t.assign(income=[5000.0, -1.0, *t.income[2:]]),
            small_contract(out_of_range="error"),
            "income",
            "(2 rows)",
        ),
        (
            "unseen category, policy error",
            lambda t: t.assign(region=["east", *t.region[1:]]),
            small_contract(unknown="error"),
            "region",
            "'east'",
        ),
        ("empty table", lambda t: t.iloc[:0], small_contract(), None, "empty"),
        (
            "single class",
            lambda t: t.assign(default="no"),
            small_contract(),
            "default",
            "single class",
        ),
        (
            "only positives",
            lambda t: t.assign(default="yes"),
            small_contract(),
            "default",
            "single class",
        ),
        (
            "target missing",
            lambda t: t.assign(default=[None, *t.default[1:]]),
            small_contract(),
            "default",
            "target value missing (1 row)",
        ),
    ],
)
def test_bad_tables_are_errors(kind, make_table, contract, column, needle):
    report = check_table(make_table(small_table()), contract, source="bank.csv")
    assert not report.ok, kind
    matching = [m for m in report.errors if needle in m]
    assert matching, report.errors
    for message in report.errors + report.warnings:
        assert message.startswith("bank.csv: ")
        assert_one_line_with_count(message)
    if column is not None:
        assert_one_line_with_count(matching[0], column)


def test_missing_column_suggests_close_name():
    table = small_table().rename(columns={"income": "Income "})
    report = check_table(table, small_contract(), source="bank.csv")
    assert report.errors == [
        "bank.csv: column 'income': missing from the table but required by the contract "
        "(did you mean 'Income '?) (20 rows)"
    ]


def test_wrong_type_counts_rows_from_csv(tmp_path):
    table = small_table().astype({"income": object})
    table.loc[[3, 5, 8], "income"] = "abc"
    table.to_csv(tmp_path / "bank.csv", index=False)
    small_contract().save(tmp_path / "contract.toml")
    report = check_table_file(tmp_path / "bank.csv", tmp_path / "contract.toml")
    assert len(report.errors) == 1
    assert "column 'income': non-numeric values" in report.errors[0]
    assert report.errors[0].endswith("(3 rows)")


@pytest.mark.parametrize(
    ("file_name", "content", "needle"),
    [
        ("bank.parquet", b"this is not parquet", "cannot read"),
        ("bank.xlsx", b"a,b\n1,2\n", "unknown file extension"),
        ("bank.csv", b"", "empty"),
        ("absent.csv", None, "not found"),
    ],
)
def test_unreadable_files_are_report_errors(file_name, content, needle, tmp_path):
    small_contract().save(tmp_path / "contract.toml")
    if content is not None:
        (tmp_path / file_name).write_bytes(content)
    report = check_table_file(tmp_path / file_name, tmp_path / "contract.toml")
    assert not report.ok
    assert len(report.errors) == 1 and needle in report.errors[0] and "\n" not in report.errors[0]
    with pytest.raises(DataError, match=needle):
        read_table(tmp_path / file_name)


def test_unreadable_contract_is_a_report_error(tmp_path):
    small_table().to_csv(tmp_path / "bank.csv", index=False)
    report = check_table_file(tmp_path / "bank.csv", tmp_path / "absent.toml")
    assert not report.ok and report.errors == [
        f"{tmp_path / 'absent.toml'}: contract file not found"
    ]


def test_embedded_credit_data_warns_but_passes(credit):
    df, contract = credit
    report = check_table(df, contract, source="credit.csv")
    assert report.ok, report.errors
    assert any("duplicate rows" in w and w.endswith("(2 rows)") for w in report.warnings)
    missing = {"Income": 381, "Assets": 47, "Debt": 18, "Home": 6, "Marital": 1, "Job": 2}
    for column, count in missing.items():
        expected = f"({count} row{'s' if count > 1 else ''})"
        assert any(
            f"column '{column}': missing values" in w and w.endswith(expected)
            for w in report.warnings
        ), column
    assert any("imputed with 125" in w for w in report.warnings)
    for message in report.warnings:
        assert_one_line_with_count(message)


def test_warnings_for_clipping_bucketing_and_extra_columns():
    table = small_table().assign(income=[5000.0, *small_table().income[1:]], note="x")
    table.loc[4, "region"] = "east"
    report = check_table(table, small_contract(), source="bank.csv")
    assert report.ok
    joined = "\n".join(report.warnings)
    assert "column 'income': values outside [0, 1000] clipped" in joined
    assert "column 'region': categories not in the contract, such as 'east'" in joined
    assert "column 'note': not in the contract, ignored" in joined


def test_check_table_never_raises_on_odd_input():
    weird = pd.DataFrame([[1, 2]], columns=["income", "income"])
    report = check_table(weird, small_contract(), source="odd.csv")
    assert not report.ok and all("\n" not in m for m in report.errors)


# ----- tables -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq"])
def test_csv_and_parquet_read_the_same(credit, suffix, tmp_path):
    df, contract = credit
    path = tmp_path / f"bank{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    read = read_table(path)
    assert read.shape == df.shape
    np.testing.assert_array_equal(contract.encode(read), contract.encode(df))
    assert contract.fingerprint(read) == contract.fingerprint(df)


# ----- embedded banks and splits ----------------------------------------------------------


def test_lending_club_region_banks(lending_banks):
    sizes = {bank: len(rows) for bank, rows in lending_banks.items()}
    assert sizes == {
        "northeast": 1925,
        "midwest": 1815,
        "south_atlantic": 2030,
        "south_central": 1641,
        "west": 2446,
    }
    assert (lending_banks["south_atlantic"]["addr_state"] == "DC").any()


def test_credit_data_banks_are_seeded_and_have_both_classes(credit):
    _, contract = credit
    banks = embedded_banks("credit_data", seed=0)
    assert list(banks) == [f"bank-{i}" for i in range(1, 6)]
    assert sum(len(rows) for rows in banks.values()) == 4454
    for rows in banks.values():
        labels = contract.labels(rows)
        assert len(rows) >= 50 and 0 < labels.sum() < len(labels)
    again = embedded_banks("credit_data", seed=0)
    assert all(banks[b].index.equals(again[b].index) for b in banks)
    other = embedded_banks("credit_data", seed=1)
    assert not all(banks[b].index.equals(other[b].index) for b in banks)


def test_unknown_embedded_dataset():
    with pytest.raises(
        DataError, match="unknown dataset 'x'; choose one of lending_club, credit_data"
    ):
        load_embedded("x")


def test_stratified_split_per_bank(lending_banks, lending):
    _, contract = lending
    for rows in lending_banks.values():
        train, test = stratified_split(rows, contract, test_fraction=0.2, seed=0)
        assert abs(len(test) - 0.2 * len(rows)) <= 1
        assert len(train) + len(test) == len(rows)
        assert not set(train.index) & set(test.index)
        for part in (train, test):
            labels = contract.labels(part)
            assert 0 < labels.sum() < len(labels)
        _, test_again = stratified_split(rows, contract, test_fraction=0.2, seed=0)
        assert test.index.equals(test_again.index)
    _, other = stratified_split(rows, contract, test_fraction=0.2, seed=1)
    assert not test.index.equals(other.index)


def test_stratified_split_needs_two_rows_per_class():
    with pytest.raises(DataError, match="at least 2"):
        stratified_split(small_table(8).assign(default=["yes"] + ["no"] * 7), small_contract())


def test_split_table_by_column_slugifies_values():
    table = small_table().assign(branch=["New York", "Boston"] * 10)
    banks = split_table(table, by="branch")
    assert list(banks) == ["boston", "new_york"]
    assert [len(rows) for rows in banks.values()] == [10, 10]
    with pytest.raises(DataError, match="region map"):
        split_table(table, by="branch", region_map={"Boston": "northeast"})


def test_split_table_by_n_banks(credit):
    df, contract = credit
    banks = split_table(df, n_banks=3, contract=contract, seed=7, alpha=0.3, min_rows=100)
    assert len(banks) == 3 and sum(len(b) for b in banks.values()) == len(df)
    assert all(len(rows) >= 100 for rows in banks.values())
    with pytest.raises(DataError, match="exactly one"):
        split_table(df, by="Home", n_banks=2)
    with pytest.raises(DataError, match="contract"):
        split_table(df, n_banks=2)
    with pytest.raises(DataError, match="cannot split 200 rows .* use fewer banks, more rows"):
        split_table(df.iloc[:200], n_banks=5, contract=contract)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_split_table_file_writes_one_file_per_bank(credit, fmt, tmp_path):
    df, contract = credit
    df.to_csv(tmp_path / "pooled.csv", index=False)
    contract.save(tmp_path / "contract.toml")
    paths = split_table_file(
        tmp_path / "pooled.csv",
        n_banks=5,
        contract_path=tmp_path / "contract.toml",
        out_dir=tmp_path / "banks",
        fmt=fmt,
    )
    expected = embedded_banks("credit_data", seed=0)
    assert list(paths) == list(expected)
    for bank, path in paths.items():
        assert path == tmp_path / "banks" / f"{bank}.{fmt}"
        assert len(read_table(path)) == len(expected[bank])


def test_data_layer_does_not_import_torch_or_flower():
    code = "import sys, fedrisk.data; print(sorted({'torch', 'flwr', 'opacus'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
