"""The consortium's PD calibration: fitted on score histograms, stored in the model file,
applied as loaded, and used by scoring when a bank gives no calibration of its own."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from scipy.special import expit, logit

from fedrisk.data import load_embedded
from fedrisk.models import ModelSpec, build_model, load_model, model_arrays, save_model
from fedrisk.models.calibration import PlattMap, fit_histogram_calibration, fit_platt
from fedrisk.models.histograms import ScoreGrid, eval_grid
from fedrisk.models.store import CALIBRATION_KEY, ModelFileError
from fedrisk.privacy.release import gaussian_release
from fedrisk.risk import score_applicants

TRUE_MAP = PlattMap(0.8, 1.4)  # a model whose PDs run too low and too spread out


def rows(n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model and outcomes drawn from the TRUE_MAP-calibrated PDs."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(logit(0.015), 1.0, n)
    return logits, (rng.random(n) < TRUE_MAP.probabilities(logits)).astype(float)


def test_the_map_fitted_on_exact_histograms_recovers_the_true_one():
    logits, labels = rows()
    grid = ScoreGrid(-9.0, -0.5, 64)
    fitted = fit_histogram_calibration(*grid.histograms(logits, labels), grid, "platt")
    on_rows = fit_platt(logits, labels)
    assert fitted.slope == pytest.approx(on_rows.slope, abs=0.03)
    assert fitted.intercept == pytest.approx(on_rows.intercept, abs=0.12)
    assert fitted.slope == pytest.approx(TRUE_MAP.slope, abs=0.05)
    intercept_only = fit_histogram_calibration(*grid.histograms(logits, labels), grid,
                                               "intercept")
    assert intercept_only.slope == 1.0
    assert intercept_only.probabilities(logits).mean() == pytest.approx(labels.mean(), rel=0.02)


def test_on_noisy_histograms_the_fit_matches_the_default_rate_without_clipping_bias():
    # 2,000 held-out rows, 5% defaults, five banks' noise at eval-epsilon 1 (sigma 7 each)
    logits, labels = rows(2_000, seed=1)
    grid = eval_grid(0.05, 10, -4.0, 2.0)
    positive, negative = grid.histograms(logits, labels)
    noise_sd = 7.06 * np.sqrt(5)
    ratios = []
    for _ in range(60):
        fitted = fit_histogram_calibration(gaussian_release(positive, noise_sd),
                                           gaussian_release(negative, noise_sd), grid, "platt",
                                           noise_sd)
        ratios.append(fitted.probabilities(logits).mean() / labels.mean())
    # Within 20% of the rate (the target) in the median of releases, the uncalibrated
    # model far outside it. One release scatters with sd about 0.25 of the rate (README), so
    # the median of 60 has sd about 0.04: the bounds are more than 4 sd away.
    assert 0.8 < np.median(ratios) < 1.2
    assert expit(logits).mean() / labels.mean() < 0.5


def test_the_model_file_carries_the_map_and_applies_it_as_loaded(tmp_path):
    spec = ModelSpec("mlp", 4, (3,), 0.05)
    model = build_model(spec)
    features = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    raw = model(torch.from_numpy(features)).detach().numpy()
    save_model(tmp_path / "m.safetensors", spec, model_arrays(model), calibration=TRUE_MAP)
    _, loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.calibration == TRUE_MAP
    calibrated = loaded(torch.from_numpy(features)).detach().numpy()
    np.testing.assert_allclose(calibrated, TRUE_MAP.logits(raw), rtol=1e-5, atol=1e-5)


def test_a_map_that_would_reverse_the_ranking_is_refused_at_load(tmp_path):
    spec = ModelSpec("logistic", 4, (), 0.05)
    path = tmp_path / "m.safetensors"
    save_model(path, spec, model_arrays(build_model(spec)), calibration=TRUE_MAP)
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
    metadata[CALIBRATION_KEY] = json.dumps({"slope": -1.0, "intercept": 0.0})
    save_file(load_file(str(path)), str(path), metadata=metadata)
    with pytest.raises(ModelFileError, match="not a valid fedrisk model file"):
        load_model(path)


def test_scoring_uses_the_consortium_map_when_the_bank_gives_none(tmp_path):
    table, contract = load_embedded("credit_data")
    (tmp_path / "data").mkdir()
    contract.save(tmp_path / "data" / "contract.toml")
    spec = ModelSpec("logistic", contract.n_features, (), contract.prior_default_rate)
    save_model(tmp_path / "model.safetensors", spec, model_arrays(build_model(spec)),
               calibration=TRUE_MAP)
    table.head(20).to_csv(tmp_path / "applicants.csv", index=False)
    result = score_applicants(tmp_path, tmp_path / "applicants.csv", None, with_reasons=False)
    assert result.calibration == "consortium"
    assert set(result.scores["calibration"]) == {"consortium"}
    _, model = load_model(tmp_path / "model.safetensors")
    model.calibration = None  # the aggregate's own logits
    raw = model(torch.from_numpy(contract.encode(table.head(20)))).detach().numpy()
    np.testing.assert_allclose(result.scores["pd"], TRUE_MAP.probabilities(raw), rtol=1e-5)
