"""The `fedrisk` command: user errors are one-line messages with exit code 2, never tracebacks."""

import json

import pandas as pd
import pytest
from conftest import run_cli, write_embedded


@pytest.fixture(scope="module")
def credit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("credit")
    _, _, table = write_embedded("credit_data", folder, "credit")
    return folder, table


def check(folder, table: pd.DataFrame, name: str = "bank.csv"):
    path = folder / name
    if name.endswith(".parquet"):
        table.to_parquet(path)
    else:
        table.to_csv(path, index=False)
    return run_cli("data", "check", str(path), "--contract", str(folder / "contract.toml"))


def assert_user_error(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stderr


def test_real_bank_data_passes_with_warnings_for_duplicates_and_missing_values(credit):
    folder, table = credit
    result = check(folder, table, "ok.parquet")
    assert result.returncode == 0, result.stderr
    assert "duplicate" in result.stdout and "Income" in result.stdout


@pytest.mark.parametrize("mutate,needles", [
    (lambda t: t.drop(columns=["Income"]), ["Income", "missing"]),
    (lambda t: t.assign(Seniority=["abc"] * len(t)), ["Seniority"]),
    (lambda t: t.iloc[0:0], ["empty"]),
    (lambda t: t.assign(Status="good"), ["Status"]),
])
def test_bad_tables_are_errors_naming_the_column(credit, mutate, needles):
    folder, table = credit
    assert_user_error(check(folder, mutate(table.copy())), *needles)


def test_unreadable_and_missing_files_are_one_line_errors(credit, tmp_path):
    folder, _ = credit
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet")
    for path in (tmp_path / "garbage.parquet", tmp_path / "absent.csv"):
        result = run_cli("data", "check", str(path), "--contract", str(folder / "contract.toml"))
        assert_user_error(result, path.name)
        assert len(result.stderr.strip().splitlines()) == 1


def test_contract_draft_and_split_round_trip(credit, tmp_path):
    folder, _ = credit
    drafted = tmp_path / "drafted.toml"
    result = run_cli("data", "contract", str(folder / "credit.csv"), "--target", "Status",
                     "--positive", "bad", "--protected", "Age,Marital", "-o", str(drafted))
    assert result.returncode == 0 and "review" in result.stdout
    result = run_cli("data", "split", str(folder / "credit.csv"), "--banks", "3", "--contract",
                     str(drafted), "--out", str(tmp_path / "banks"))
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "banks").glob("*.csv"))
    assert len(files) == 3
    assert sum(len(pd.read_csv(f)) for f in files) == 4454


def test_audit_verify_detects_a_tampered_ledger(dp_run, tmp_path):
    output, _ = dp_run
    good = run_cli("audit", "verify", str(output))
    assert good.returncode == 0 and good.stdout.count("OK") == 5
    ledger = next((output / "banks").glob("west/ledgers/*.jsonl"))
    lines = ledger.read_text().splitlines()
    entry = json.loads(lines[3])
    entry["body"]["epsilon"] = 0.001 if "epsilon" in entry["body"] else entry["body"]
    lines[3] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    tampered = tmp_path / "west.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    bad = run_cli("audit", "verify", str(tampered))
    assert bad.returncode == 1 and "entry 3" in bad.stdout
