"""Synthetic consortia (`fedrisk data synthesize`): new rows, the source's default rate, the
same contract, the same bytes for a seed, and realistic enough to train on."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import ENV, run_cli
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedrisk.data import load_embedded, stratified_split
from fedrisk.data.synthetic import fit_synthesizer, synthesize_like
from fedrisk.data.values import canonical_strings

DATASETS = ("lending_club", "credit_data")


@pytest.fixture(scope="module")
def embedded():
    return {name: load_embedded(name) for name in DATASETS}


def row_keys(table: pd.DataFrame, columns) -> pd.Series:
    """One string per row: its canonical values in ``columns`` (missing as '-')."""
    key = pd.Series("", index=table.index, dtype="str")
    for column in columns:
        key = key + "|" + canonical_strings(table[column]).fillna("-").astype("str")
    return key


def copies(rows: pd.DataFrame, source: pd.DataFrame, columns) -> np.ndarray:
    """Whether each row equals some source row on every one of ``columns``."""
    return row_keys(rows, columns).isin(set(row_keys(source, columns))).to_numpy()


def feature_columns(table: pd.DataFrame, contract) -> list[str]:
    return [c for c in table.columns if c != contract.target and c not in contract.drop]


@pytest.mark.parametrize("name", DATASETS)
def test_no_synthetic_row_copies_a_source_row(embedded, name):
    df, contract = embedded[name]
    columns = feature_columns(df, contract)
    synthetic = fit_synthesizer(df, contract, seed=0).sample(20_000, seed=0)
    assert copies(df.sample(50, random_state=0), df, columns).all()  # the check sees copies
    assert copies(synthetic, df, columns).sum() == 0


@pytest.mark.parametrize("name", DATASETS)
def test_on_discrete_columns_alone_rows_match_the_source_no_more_than_new_real_rows(
        embedded, name):
    # On the categorical and few-valued columns alone, a new real customer often equals
    # some existing one by chance; that rate (held-out rows against the rows the
    # synthesizer saw) is the bar: a synthesizer that memorized rows would exceed it.
    df, contract = embedded[name]
    train, held_out = stratified_split(df, contract, test_fraction=0.2, seed=0)
    synthesizer = fit_synthesizer(train, contract, seed=0)
    discrete = [c for c, kind in zip(synthesizer.columns, synthesizer.column_kinds, strict=True)
                if kind != "continuous"]
    synthetic = synthesizer.sample(20_000, seed=0)
    assert copies(synthetic, train, discrete).mean() <= copies(held_out, train, discrete).mean()


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("rows", [1_000, 12_345])
def test_default_rate_matches_the_source(embedded, name, rows):
    df, contract = embedded[name]
    source_rate = contract.labels(df).mean()
    synthetic = fit_synthesizer(df, contract, seed=1).sample(rows, seed=1)
    assert len(synthetic) == rows
    assert abs(contract.labels(synthetic).sum() - rows * source_rate) <= 0.5
    assert not synthetic.head(rows // 10)[contract.target].eq("good").all()  # classes interleave


@pytest.mark.parametrize("name", DATASETS)
def test_the_written_table_passes_data_check_against_the_written_contract(embedded, name,
                                                                            tmp_path):
    df, contract = embedded[name]
    out = tmp_path / "synthetic"
    result = run_cli("data", "synthesize", "--like", name, "--rows", "3000", "--seed", "7",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    rate = contract.labels(df).mean()
    assert result.stdout.strip().splitlines() == [
        f"wrote {out / 'data.parquet'} (3,000 rows like {name}, {rate:.1%} bad) and "
        f"{out / 'contract.toml'}"]
    check = run_cli("data", "check", str(out / "data.parquet"), "--contract",
                    str(out / "contract.toml"))
    assert check.returncode == 0, check.stderr
    assert "OK (3000 rows" in check.stdout
    table = pd.read_parquet(out / "data.parquet")
    # Every column the contract uses is kept, protected and grade columns included.
    assert list(table.columns) == [c for c in df.columns if c not in contract.drop]
    assert (out / "data.parquet").stat().st_mode & 0o777 == 0o600  # rows are written private


def test_a_seed_gives_the_same_bytes_and_another_seed_other_rows(tmp_path):
    written = [synthesize_like("credit_data", 2_000, tmp_path / f"run{i}", seed=seed)
               for i, seed in enumerate((5, 5, 6))]
    data = [w.data_path.read_bytes() for w in written]
    assert data[0] == data[1] and data[0] != data[2]
    assert written[0].contract_path.read_bytes() == written[1].contract_path.read_bytes()


@pytest.mark.parametrize("name", DATASETS)
def test_a_model_trained_on_synthetic_rows_scores_real_rows_like_one_trained_on_real_rows(
        embedded, name):
    df, contract = embedded[name]
    train, held_out = stratified_split(df, contract, test_fraction=0.2, seed=0)
    synthetic = fit_synthesizer(train, contract, seed=0).sample(5 * len(train), seed=0)

    def held_out_auc(rows: pd.DataFrame) -> float:
        model = LogisticRegression(max_iter=2000).fit(contract.encode(rows), contract.labels(rows))
        scores = model.predict_proba(contract.encode(held_out))[:, 1]
        return roc_auc_score(contract.labels(held_out), scores)

    real, synthetic_auc = held_out_auc(train), held_out_auc(synthetic)
    assert real > 0.7  # the real model learns something for the bar to mean anything
    assert abs(synthetic_auc - real) <= 0.03, (real, synthetic_auc)


def test_grade_and_protected_columns_keep_their_relations(embedded):
    # Grade heads and fairness audits read these columns on synthetic data too.
    df, contract = embedded["lending_club"]
    synthetic = fit_synthesizer(df, contract, seed=0).sample(20_000, seed=0)
    grades = contract.grades(synthetic)
    assert (grades >= 0).all()
    assert spearmanr(grades, synthetic["int_rate"])[0] > 0.95  # grade still prices the loan
    shares = [t["addr_state"].value_counts(normalize=True) for t in (df, synthetic)]
    assert (shares[0] - shares[1].reindex(shares[0].index, fill_value=0)).abs().max() < 0.01
    assert set(synthetic["sub_grade"]) <= set(contract.grade_levels)


@pytest.mark.parametrize("args,needle", [
    (["--like", "nope", "--rows", "10"], "unknown dataset 'nope'"),
    (["--like", "credit_data", "--rows", "1"], "at least 2 rows"),
])
def test_bad_arguments_are_one_line_errors(args, needle, tmp_path):
    result = run_cli("data", "synthesize", *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_output_path_that_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "taken").write_text("")
    result = run_cli("data", "synthesize", "--like", "credit_data", "--rows", "10", "--out",
                     str(tmp_path / "taken"))
    assert result.returncode == 2 and "is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_million_rows_in_under_a_minute_and_two_gigabytes(tmp_path):
    code = ("import json, resource, sys, time; from fedrisk.data.synthetic import synthesize_like;"
            "t = time.perf_counter(); synthesize_like('lending_club', 1_000_000, sys.argv[1]);"
            "print(json.dumps({'seconds': time.perf_counter() - t,"
            " 'rss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, env=ENV, timeout=300, check=True)
    measured = json.loads(result.stdout)
    assert pq.read_metadata(tmp_path / "data.parquet").num_rows == 1_000_000
    assert measured["seconds"] < 60 and measured["rss_kb"] < 2 * 1024**2, measured
