"""Applicant scoring and portfolio loss on a small run directory built here (no Flower)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pickle
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import save_file
from scipy.special import expit, ndtri
from scipy.stats import multivariate_normal

from fedrisk.data import Contract, DataError, load_embedded
from fedrisk.models import ModelSpec, build_model, model_arrays, save_model
from fedrisk.models.store import SPEC_KEY, load_model
from fedrisk.risk import (
    ModelFileError,
    basel_retail_correlation,
    load_run,
    portfolio_loss,
    score_applicants,
    simulate_losses,
    vasicek_loss_quantile,
)
from fedrisk.risk.reasons import column_attributions, reference_encoding
from fedrisk.risk.scoring import score_rows

LGD = 0.45
BANK_ROWS = 3000
APPLICANT_ROWS = 400
# Applicant rows broken on purpose, and the column each one must be rejected for.
BROKEN_ROWS = {2: "int_rate", 5: "int_rate", 8: "term", 11: "funded_amnt", 14: "term"}


def strict_contract(contract: Contract) -> Contract:
    """lending_club with two "error" policies, so that rows can break them."""
    numeric = [dataclasses.replace(f, out_of_range="error") if f.name == "int_rate" else f
               for f in contract.numeric]
    categorical = [dataclasses.replace(f, unknown="error") if f.name == "term" else f
                   for f in contract.categorical]
    return dataclasses.replace(contract, numeric=tuple(numeric), categorical=tuple(categorical))


@pytest.fixture(scope="session")
def lending() -> tuple[pd.DataFrame, Contract]:
    table, contract = load_embedded("lending_club")
    return table, strict_contract(contract)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, lending) -> Path:
    """A run directory like `fedrisk simulate` writes, with a model trained here in a second."""
    table, contract = lending
    directory = tmp_path_factory.mktemp("risk_run")
    features = torch.from_numpy(contract.encode(table))
    labels = torch.from_numpy(contract.labels(table))
    spec = ModelSpec("mlp", contract.n_features, (16,), 0.05)
    model = build_model(spec, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: extra threads only contend on a busy machine
    try:
        for _ in range(150):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(features), labels)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    save_model(directory / "model.safetensors", spec, model_arrays(model))
    (directory / "data").mkdir()
    contract.save(directory / "data" / "contract.toml")
    table.iloc[:BANK_ROWS].to_csv(directory / "data" / "bank.csv", index=False)
    config = {"seed": 0, "test-fraction": 0.2, "dataset": "lending_club"}
    (directory / "metrics.json").write_text(json.dumps({"config": config}))
    return directory


@pytest.fixture(scope="session")
def applicants_path(tmp_path_factory, lending) -> Path:
    """Applicants (not the bank's rows) without the target, five of them broken."""
    table, contract = lending
    applicants = table.iloc[BANK_ROWS:BANK_ROWS + APPLICANT_ROWS].drop(columns=[contract.target])
    applicants = applicants.reset_index(drop=True).astype({"int_rate": object,
                                                           "funded_amnt": float})
    applicants.insert(0, "applicant_id", [f"A{i:04d}" for i in range(len(applicants))])
    applicants.loc[2, "int_rate"] = "abc"  # non-numeric
    applicants.loc[5, "int_rate"] = 45.0  # outside [5, 30] under out_of_range = "error"
    applicants.loc[8, "term"] = "term_99"  # unseen under unknown = "error"
    applicants.loc[11, "funded_amnt"] = np.nan  # no exposure: expected loss impossible
    applicants.loc[14, ["int_rate", "term"]] = ["x", "term_12"]  # two problems
    applicants.loc[20, "emp_length"] = np.nan  # repaired by the contract: scored
    applicants.loc[21, "verification_status"] = "weird"  # bucketed: scored
    path = tmp_path_factory.mktemp("applicants") / "applicants.csv"
    applicants.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def scored(run_dir, applicants_path, tmp_path_factory):
    output = tmp_path_factory.mktemp("scores") / "scores.csv"
    return score_applicants(run_dir, applicants_path, output, lgd=LGD)


# ----- scoring ---------------------------------------------------------------------


def test_every_applicant_is_scored_or_rejected(scored, applicants_path):
    applicants = pd.read_csv(applicants_path)
    written = pd.read_csv(scored.output_path)
    rejects = pd.read_csv(scored.rejects_path)
    assert scored.rejects_path.name == "scores.rejects.csv"
    assert scored.n_applicants == len(applicants) == APPLICANT_ROWS
    assert scored.n_scored + scored.n_rejected == scored.n_applicants
    assert len(written) == scored.n_scored and len(rejects) == scored.n_rejected
    assert set(rejects["row"]) == set(BROKEN_ROWS)
    assert set(written["row"]) | set(rejects["row"]) == set(range(APPLICANT_ROWS))
    for row, reason in zip(rejects["row"], rejects["reason"], strict=True):
        assert f"column '{BROKEN_ROWS[row]}'" in reason
    assert "non-numeric value 'x'" in rejects.set_index("row").loc[14, "reason"]
    assert "term_12" in rejects.set_index("row").loc[14, "reason"]
    assert list(rejects["applicant_id"]) == [f"A{r:04d}" for r in sorted(BROKEN_ROWS)]


def test_scores_are_consistent(scored, applicants_path, run_dir):
    contract = load_run(run_dir).contract
    scores = pd.read_csv(scored.output_path)
    applicants = pd.read_csv(applicants_path)
    assert ((scores["pd"] > 0) & (scores["pd"] < 1)).all()
    assert list(scores["risk_band"]) == list(contract.risk_bands(scores["pd"]))
    exposure = applicants.loc[scores["row"], "funded_amnt"].to_numpy()
    np.testing.assert_allclose(scores["expected_loss"], scores["pd"] * LGD * exposure)
    assert list(scores["applicant_id"]) == list(applicants.loc[scores["row"], "applicant_id"])
    assert set(scores["calibration"]) == {"uncalibrated"}
    assert "grade" not in scores.columns  # the model has no grade head
    for column in ("reason_1", "reason_2", "reason_3"):
        assert scores[column].map(lambda r: any(c in r for c in contract.input_columns)).all()
        assert scores[column].str.contains(r"(?:raises|lowers) risk").all()


def test_uncalibrated_pd_is_the_model_sigmoid(run_dir, scored, applicants_path):
    run = load_run(run_dir)
    applicants = pd.read_csv(applicants_path).iloc[scored.scores["row"]]
    logits = run.logits(run.contract.encode(applicants))
    np.testing.assert_allclose(scored.scores["pd"], expit(logits))


def test_reasons_add_up_to_the_logit_change(run_dir, applicants_path):
    run = load_run(run_dir)
    rows = pd.read_csv(applicants_path).drop(index=list(BROKEN_ROWS))
    features = run.contract.encode(rows)
    attributions = column_attributions(run.model, run.contract, features, batch_size=128)
    reference = run.logits(reference_encoding(run.contract)[None, :])
    np.testing.assert_allclose(attributions.sum(axis=1), run.logits(features) - reference,
                               atol=1e-4)


def test_scoring_without_reasons_and_with_a_grade_head(run_dir):
    run = load_run(run_dir)
    spec = replace(run.model.spec, n_grades=len(run.contract.grade_levels))
    run = replace(run, model=build_model(spec))  # the same network plus an untrained grade head
    table, _ = load_embedded("lending_club")
    rows = table.head(50).assign(row=np.arange(50))
    scores = score_rows(run, rows, calibrator=None, lgd=LGD, n_reasons=0,
                        id_column="applicant_id", batch_size=16)
    assert "reason_1" not in scores.columns
    assert set(scores["grade"]) <= set(run.contract.grade_levels)
    assert scores["grade"].notna().all()


@pytest.mark.parametrize("source", ["csv", "memory"])
@pytest.mark.parametrize("dataset", ["lending_club", "credit_data"])
def test_vectorized_encoding_equals_the_contract(tmp_path, dataset, source):
    table, contract = load_embedded(dataset)
    table = table.astype({f.name: object for f in contract.categorical_inputs})
    first = contract.categorical_inputs[0].name
    number = contract.numeric_inputs[0].name
    table = table.astype({number: float})
    table.loc[table.index[:5], first] = None
    table.loc[table.index[5:9], first] = "never seen"
    table.loc[table.index[9:12], number] = np.nan
    table.loc[table.index[12:14], number] = 1e12
    if source == "csv":
        table.to_csv(tmp_path / "t.csv", index=False)
        table = pd.read_csv(tmp_path / "t.csv")
    np.testing.assert_array_equal(contract.encode(table), contract.encode(table.astype(object)))


# ----- calibration -----------------------------------------------------------------


def test_calibration_is_bank_local_and_stored_as_json(run_dir, applicants_path, tmp_path):
    bank = run_dir / "data" / "bank.csv"
    result = score_applicants(run_dir, applicants_path, tmp_path / "s.csv",
                              calibration_data=bank, with_reasons=False)
    assert result.calibration == "platt"
    assert result.calibrator_path == tmp_path / "s.calibration.json"
    stored = json.loads(result.calibrator_path.read_text())
    fitted = stored["fitted_on"]
    assert stored["method"] == "platt" and fitted["held_out_rows"] == BANK_ROWS * 0.2
    # Unpenalized Platt scaling matches the held-out default rate on average.
    assert fitted["mean_pd_calibrated"] == pytest.approx(fitted["held_out_default_rate"],
                                                         abs=1e-4)
    assert set(pd.read_csv(tmp_path / "s.csv")["calibration"]) == {"platt"}
    reused = score_applicants(run_dir, applicants_path, calibration_data=result.calibrator_path,
                              with_reasons=False)
    np.testing.assert_allclose(reused.scores["pd"], result.scores["pd"])


def test_isotonic_calibration_keeps_pd_inside_zero_one(run_dir, applicants_path):
    result = score_applicants(run_dir, applicants_path, calibration_data=run_dir / "data" /
                              "bank.csv", calibration_method="isotonic", with_reasons=False)
    assert result.calibration == "isotonic"
    assert ((result.scores["pd"] > 0) & (result.scores["pd"] < 1)).all()


def test_calibrator_of_another_model_is_refused(run_dir, applicants_path, tmp_path):
    path = tmp_path / "other.json"
    result = score_applicants(run_dir, applicants_path, tmp_path / "s.csv",
                              calibration_data=run_dir / "data" / "bank.csv", with_reasons=False)
    stored = json.loads(result.calibrator_path.read_text())
    path.write_text(json.dumps({**stored, "model_sha256": "0" * 64}))
    with pytest.raises(DataError, match="another model file"):
        score_applicants(run_dir, applicants_path, calibration_data=path)


# ----- whole-table errors and unsafe model files ----------------------------------------


def test_whole_table_problems_are_one_line_errors(run_dir, applicants_path, tmp_path):
    pd.read_csv(applicants_path).drop(columns=["term"]).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match="column 'term': missing") as error:
        score_applicants(run_dir, tmp_path / "a.csv")
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="file not found"):
        score_applicants(run_dir, tmp_path / "absent.csv")
    with pytest.raises(DataError, match="lgd"):
        score_applicants(run_dir, applicants_path, lgd=1.5)


class CodeRunner:
    """Pickles to a call of ``open(marker, "w")``: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_torch_pickle(path: Path, marker: Path) -> None:
    torch.save({"body.0.weight": CodeRunner(marker)}, path)


def write_raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(CodeRunner(marker)))


def write_pickle_in_metadata(path: Path, marker: Path) -> None:
    arrays = {"head.weight": np.zeros((1, 4), np.float32), "head.bias": np.zeros(1, np.float32)}
    payload = pickle.dumps(CodeRunner(marker)).decode("latin-1")
    save_file(arrays, str(path), metadata={SPEC_KEY: payload})


def write_lying_spec(path: Path, marker: Path) -> None:
    spec = ModelSpec("mlp", 40, (10**9,), 0.05)  # would allocate 40e9 weights if trusted
    arrays = {"head.weight": np.zeros((1, 40), np.float32), "head.bias": np.zeros(1, np.float32)}
    save_file(arrays, str(path), metadata={SPEC_KEY: json.dumps(spec.to_dict())})


@pytest.mark.parametrize("plant", [write_torch_pickle, write_raw_pickle, write_pickle_in_metadata,
                                   write_lying_spec])
def test_planted_model_file_is_refused_and_runs_no_code(run_dir, applicants_path, tmp_path,
                                                        plant):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(CodeRunner(live))).close()
    assert live.exists()  # the payload does run code when unpickled
    planted = tmp_path / "run"
    shutil.copytree(run_dir, planted)
    marker = tmp_path / "marker"
    plant(planted / "model.safetensors", marker)
    with pytest.raises(ModelFileError, match="model.safetensors") as error:
        score_applicants(planted, applicants_path)
    assert "\n" not in str(error.value)
    assert not marker.exists()


# ----- portfolio -------------------------------------------------------------------


def test_vasicek_large_portfolio_quantile():
    loans, pd_, rho = 5000, 0.02, 0.15
    simulation = simulate_losses(np.full(loans, pd_), np.ones(loans), rho, scenarios=200_000,
                                 seed=0)
    assert simulation.expected_loss / loans == pytest.approx(pd_, rel=0.01)
    for level in (0.99, 0.999):
        exact = vasicek_loss_quantile(pd_, rho, level)
        assert simulation.value_at_risk(level) / loans == pytest.approx(exact, rel=0.04)


@pytest.mark.parametrize("candidates_per_block", [1_000_000, 100])
def test_simulated_defaults_follow_the_copula(candidates_per_block):
    """Per-loan and pairwise default frequencies match the Gaussian copula's exact values.

    Exposures 1, 2, 4, ... make each scenario's loss the bit mask of the loans that
    defaulted. Wide blocks (1,000,000) exercise the thinning, narrow ones (100) the
    block layout and the continued geometric runs.
    """
    pd_ = np.array([0.01, 0.05, 0.2, 0.5, 0.03])
    rho = np.array([0.3, 0.1, 0.2, 0.05, 0.4])
    scenarios = 100_000
    simulation = simulate_losses(pd_, 2.0 ** np.arange(pd_.size), rho, scenarios=scenarios,
                                 seed=7, candidates_per_block=candidates_per_block)
    defaulted = (simulation.losses.astype(np.int64)[:, None] >> np.arange(pd_.size)) & 1
    expected = {(i,): pd_[i] for i in range(pd_.size)}
    for i, j in itertools.combinations(range(pd_.size), 2):
        r = np.sqrt(rho[i] * rho[j])
        both = multivariate_normal(cov=[[1, r], [r, 1]]).cdf([ndtri(pd_[i]), ndtri(pd_[j])])
        expected[(i, j)] = both
    for loans, probability in expected.items():
        frequency = defaulted[:, list(loans)].all(axis=1).mean()
        assert abs(frequency - probability) < 4.5 * np.sqrt(probability * (1 - probability)
                                                           / scenarios), loans


def test_certain_and_impossible_defaults():
    simulation = simulate_losses([0.0, 1.0, 0.3], [5.0, 7.0, 11.0], 0.2, scenarios=5000, seed=1)
    assert set(np.unique(simulation.losses)) == {7.0, 18.0}
    assert simulation.contributions[0] == 0 and simulation.contributions[1] == 7.0
    assert simulation.contributions.sum() == pytest.approx(simulation.expected_shortfall(0.99))


def test_basel_retail_correlation():
    rho = basel_retail_correlation([0.0, 0.01, 0.05, 1.0])
    assert rho[0] == pytest.approx(0.16) and rho[-1] == pytest.approx(0.03)
    assert np.all(np.diff(rho) < 0)


@pytest.fixture(scope="session")
def portfolio(run_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("portfolio")
    return portfolio_loss(run_dir, run_dir / "data" / "bank.csv", scenarios=20_000, seed=3,
                          output_dir=output)


def test_portfolio_measures_are_ordered(portfolio):
    for level in (0.99, 0.999):
        assert (portfolio.expected_shortfall[level] >= portfolio.value_at_risk[level]
                >= portfolio.expected_loss)
    assert portfolio.expected_loss == pytest.approx(portfolio.expected_loss_exact, rel=0.02)
    contributions = portfolio.contributions["es_contribution"]
    assert contributions.sum() == pytest.approx(portfolio.expected_shortfall[0.99])
    assert contributions.is_monotonic_decreasing
    assert portfolio.n_loans == BANK_ROWS


def test_portfolio_is_deterministic_for_a_seed(run_dir, portfolio):
    book = run_dir / "data" / "bank.csv"
    again = portfolio_loss(run_dir, book, scenarios=20_000, seed=3, workers=2)
    np.testing.assert_array_equal(again.simulation.losses, portfolio.simulation.losses)
    np.testing.assert_array_equal(again.simulation.contributions,
                                  portfolio.simulation.contributions)
    other = portfolio_loss(run_dir, book, scenarios=20_000, seed=4)
    assert not np.array_equal(other.simulation.losses, portfolio.simulation.losses)


def test_portfolio_writes_summary_histogram_and_contributions(portfolio):
    summary = json.loads(portfolio.summary_path.read_text())
    assert set(summary["value_at_risk"]) == {"99%", "99.9%"}
    assert summary["expected_shortfall"]["99%"] == portfolio.expected_shortfall[0.99]
    assert len(summary["top_contributors"]) == 10
    assert portfolio.histogram_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(portfolio.contributions_path)) == BANK_ROWS


def test_book_with_bad_loans_is_refused(run_dir, applicants_path, tmp_path):
    with pytest.raises(DataError, match="5 of 400 loans fail the contract") as error:
        portfolio_loss(run_dir, applicants_path, scenarios=100, output_dir=tmp_path)
    assert "\n" not in str(error.value)
    assert len(pd.read_csv(tmp_path / "book.rejects.csv")) == len(BROKEN_ROWS)


@pytest.mark.parametrize("arguments", [{"lgd": 1.5}, {"asset_correlation": 1.0},
                                       {"scenarios": 0}])
def test_portfolio_arguments_are_checked(run_dir, arguments):
    with pytest.raises(DataError):
        portfolio_loss(run_dir, run_dir / "data" / "bank.csv", **arguments)


# ----- files of personal data ----------------------------------------------------------


def test_scores_rejects_calibrator_and_contributions_are_owner_only(run_dir, applicants_path,
                                                                     tmp_path):
    previous = os.umask(0o022)  # the usual umask: new files readable by group and others
    try:
        scored = score_applicants(run_dir, applicants_path, tmp_path / "scores.csv",
                                  calibration_data=run_dir / "data" / "bank.csv",
                                  calibration_method="isotonic", with_reasons=False)
        book = portfolio_loss(run_dir, run_dir / "data" / "bank.csv", scenarios=1_000,
                              output_dir=tmp_path / "portfolio" / "book")
        with pytest.raises(DataError):
            portfolio_loss(run_dir, applicants_path, scenarios=100,
                           output_dir=tmp_path / "refused")
    finally:
        os.umask(previous)
    assert len(pd.read_csv(scored.rejects_path)) == len(BROKEN_ROWS)
    assert json.loads(scored.calibrator_path.read_text())["logit_knots"]  # held-out logits
    private = [scored.output_path, scored.rejects_path, scored.calibrator_path,
               book.contributions_path, book.summary_path,
               tmp_path / "refused" / "book.rejects.csv"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in private} == {0o600}
    folders = [tmp_path / "portfolio", tmp_path / "portfolio" / "book", tmp_path / "refused"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o700}


def test_a_model_whose_header_length_starts_with_the_pickle_opcode_loads(run_dir, tmp_path):
    """A safetensors header of 640 bytes begins 0x80 0x02: the first bytes of a pickle."""
    spec, model = load_model(run_dir / "model.safetensors")
    arrays = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    path = tmp_path / "model.safetensors"
    for padding in range(512):
        save_file(arrays, str(path), metadata={SPEC_KEY: json.dumps(spec.to_dict()),
                                               "padding": " " * padding})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[:1] == b"\x80"
    loaded_spec, _ = load_model(path)
    assert loaded_spec == spec
