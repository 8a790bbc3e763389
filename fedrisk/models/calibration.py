"""Recalibration of PD logits: one affine map on the logit, fitted on rows or on histograms.

A model trained with DP-SGD ranks well but its probabilities run low: clipping each
record's gradient shrinks most the rare class's large gradients, so the PD of a defaulter
is pulled toward zero. A monotone map of the logit fixes the level without touching the
ranking (AUC unchanged): ``calibrated logit = slope × logit + intercept`` (Platt scaling).

Two fits share that one map:

- :func:`fit_platt` on rows (0/1 labels, optionally weighted): a bank calibrating on its
  own held-out split (``fedrisk.risk.calibration``);
- :func:`fit_histogram_calibration` on score histograms (counts per bin of a public grid,
  possibly noisy DP releases): the coordinator calibrating the consortium model on the
  banks' pooled held-out histograms. Post-processing of released counts: no extra ε.

Plain numpy and scikit-learn; nothing here knows of federation or privacy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from fedrisk.models.histograms import ScoreGrid, clean_counts

# How the coordinator fits the consortium map on pooled (noisy) histograms: "platt" fits
# slope and intercept, "intercept" only the intercept (slope 1, calibration in the large).
HISTOGRAM_METHODS = ("platt", "intercept")
# Noisy fits only: a Gaussian prior on log(slope), centred on 1 (the model's own spread).
# Under eval-epsilon 1 the released defaulter counts are mostly noise and an unpenalized
# fit sometimes finds slopes of 3-6 that put the mean PD at a third of the rate
# (benchmarks/calibration.py); the prior keeps 95% of slopes within [0.37, 2.7].
SLOPE_PRIOR_SD = 0.5
MAX_RATE_FACTOR = 3.0


@dataclass(frozen=True)
class PlattMap:
    """``PD = sigmoid(slope × logit + intercept)``; identity by default.

    Attributes:
        slope, intercept: the affine map on the logit. A positive slope keeps the
            ranking (and so every AUC) unchanged.
        fitted_on: provenance (what it was fitted on, counts, the noise), for people.

    """

    slope: float = 1.0
    intercept: float = 0.0
    fitted_on: dict[str, Any] = field(default_factory=dict, compare=False)

    def logits(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits."""
        return self.slope * np.asarray(logits, dtype=np.float64) + self.intercept

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of default."""
        return expit(self.logits(logits))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlattMap:
        """Rebuild from :meth:`to_dict` output; refuses non-finite or non-increasing maps."""
        slope, intercept = float(data["slope"]), float(data["intercept"])
        if not (math.isfinite(slope) and math.isfinite(intercept) and slope > 0):
            raise ValueError("a calibration map needs a finite positive slope and a finite "
                             "intercept")
        return cls(slope, intercept, dict(data.get("fitted_on", {})))


def fit_platt(logits: np.ndarray, labels: np.ndarray,
              weights: np.ndarray | None = None) -> PlattMap:
    """Unpenalized logistic regression of 0/1 ``labels`` on ``logits`` (weighted MLE)."""
    model = LogisticRegression(C=np.inf).fit(np.asarray(logits, dtype=float).reshape(-1, 1),
                                             np.asarray(labels, dtype=float),
                                             sample_weight=weights)
    return PlattMap(float(model.coef_[0, 0]), float(model.intercept_[0]))


def fit_histogram_calibration(positive: np.ndarray, negative: np.ndarray, grid: ScoreGrid,
                              method: str = "platt", noise_sd: float = 0.0) -> PlattMap | None:
    """Fit the map on (possibly noisy) score histograms, each row taken at its bin's centre.

    ``method``: ``"platt"`` fits slope and intercept, ``"intercept"`` only the intercept
    (slope 1: calibration in the large). Exact counts (``noise_sd`` 0): maximum likelihood
    with each bin's counts as weights. Noisy counts: each released count is its true
    count plus Gaussian noise of ``noise_sd`` (the pooled noise of the banks' releases),
    so the fit maximizes the likelihood of the released counts themselves under that
    noise and binomial outcomes in each bin (bin sizes fitted too, at least 0), with a
    prior on the slope (:data:`SLOPE_PRIOR_SD`). Clipping noisy counts at 0 and fitting
    as if exact biases the PD upward where the defaulters' bins are near-empty (README,
    "Calibrated PDs"). A Platt fit whose slope is not positive (a model that ranks
    defaulters low) falls back to the intercept. None when the counts cannot support a
    fit (no default or no non-default left after clipping).
    """
    if method not in HISTOGRAM_METHODS:
        raise ValueError(f"unknown calibration method '{method}'; choose one of "
                         f"{', '.join(HISTOGRAM_METHODS)}")
    clipped_pos, clipped_neg = clean_counts(positive), clean_counts(negative)
    n_pos, n_neg = clipped_pos.sum(), clipped_neg.sum()
    if n_pos <= 0 or n_neg <= 0:
        return None
    centers = grid.centers()
    rate = n_pos / (n_pos + n_neg)
    shift = _mean_matching_shift(centers, clipped_pos + clipped_neg, rate)
    if method == "intercept":
        slope, intercept = 1.0, shift
    else:
        fitted = fit_platt(np.concatenate([centers, centers]),
                           np.concatenate([np.ones_like(centers), np.zeros_like(centers)]),
                           np.concatenate([clipped_pos, clipped_neg]))
        slope, intercept = fitted.slope, fitted.intercept
    if noise_sd > 0:
        noisy = _noisy_count_fit(np.asarray(positive, dtype=np.float64),
                                 np.asarray(negative, dtype=np.float64), centers, noise_sd,
                                 shift, method == "intercept")
        # Keep the clipped-count fit if the optimizer strays (e.g. a model that ranks
        # defaulters low drives every PD to 0): the noisy fit's mean PD must stay within
        # a factor MAX_RATE_FACTOR of the released default rate.
        if noisy is not None and _mean_pd_within(noisy, centers, clipped_pos + clipped_neg,
                                                 rate):
            slope, intercept = noisy
    if not (slope > 0 and math.isfinite(slope) and math.isfinite(intercept)):
        # A model that ranks defaulters low gets no increasing map: only the mean is fixed.
        slope, intercept, method = 1.0, shift, "intercept"
    return PlattMap(slope, intercept, {
        "method": method, "source": "pooled held-out score histograms", "bins": grid.bins,
        "logit_low": grid.low, "logit_high": grid.high, "noise_sd": noise_sd,
        "defaults": float(n_pos), "rows": float(n_pos + n_neg)})


def histogram_calibration_facts(positive: np.ndarray, negative: np.ndarray, grid: ScoreGrid,
                                calibration: PlattMap | None = None) -> dict[str, float]:
    """Mean PD, default rate and calibration slope read off histograms (counts clipped at 0).

    ``mean_pd`` is the mean of each row's PD at its bin's centre, after ``calibration``
    if given; ``calibration_slope`` is the slope of the logistic regression of the
    outcome on the (calibrated) logit: 1 for a model whose PDs are neither too spread out
    (< 1) nor too compressed (> 1). NaN where the counts leave it undefined.
    """
    positive, negative = clean_counts(positive), clean_counts(negative)
    total = positive.sum() + negative.sum()
    if total <= 0:
        return {"mean_pd": math.nan, "observed_default_rate": math.nan,
                "calibration_slope": math.nan}
    centers = grid.centers() if calibration is None else calibration.logits(grid.centers())
    slope = math.nan
    if positive.sum() > 0 and negative.sum() > 0:
        slope = fit_platt(np.concatenate([centers, centers]),
                          np.concatenate([np.ones_like(centers), np.zeros_like(centers)]),
                          np.concatenate([positive, negative])).slope
    return {"mean_pd": float(((positive + negative) * expit(centers)).sum() / total),
            "observed_default_rate": float(positive.sum() / total),
            "calibration_slope": float(slope)}


def _noisy_count_fit(positive: np.ndarray, negative: np.ndarray, centers: np.ndarray,
                     noise_sd: float, start: float, fixed_slope: bool
                     ) -> tuple[float, float] | None:
    """Maximum likelihood (slope, intercept) from noisy counts; see fit_histogram_calibration.

    In bin k of true size n_k with PD p_k, the released pair (defaults, others) is
    Gaussian with mean (n_k p_k, n_k (1 - p_k)), variance noise² + n_k p_k (1 - p_k) each
    and covariance -n_k p_k (1 - p_k) (a bin's rows are split between the two counts).
    Their sum and difference are then independent: sum ~ N(n_k, 2 noise²), difference ~
    N(n_k (2 p_k - 1), 2 noise² + 4 n_k p_k (1 - p_k)). Minimized over (log slope,
    intercept, log n_k) by BFGS with the analytic gradient, with the prior
    :data:`SLOPE_PRIOR_SD` on log slope (a maximum a posteriori fit).
    """
    total, difference = positive + negative, positive - negative
    variance = 2.0 * noise_sd ** 2  # of each bin's sum

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        slope = 1.0 if fixed_slope else math.exp(min(params[0], 5.0))
        pd, sizes = expit(slope * centers + params[1]), np.exp(np.minimum(params[2:], 30.0))
        spread = variance + 4 * sizes * pd * (1 - pd)
        residual = difference - sizes * (2 * pd - 1)
        nll = ((total - sizes) ** 2 / (2 * variance) + residual ** 2 / (2 * spread)
               + 0.5 * np.log(spread)).sum() + 0.5 * (params[0] / SLOPE_PRIOR_SD) ** 2
        d_spread = 0.5 / spread - residual ** 2 / (2 * spread ** 2)
        d_sizes = (-(total - sizes) / variance - residual * (2 * pd - 1) / spread
                   + d_spread * 4 * pd * (1 - pd))
        d_pd = -residual * 2 * sizes / spread + d_spread * 4 * sizes * (1 - 2 * pd)
        d_logit = d_pd * pd * (1 - pd)
        d_log_slope = 0.0 if fixed_slope else float(
            (d_logit * centers).sum() * slope + params[0] / SLOPE_PRIOR_SD ** 2)
        return float(nll), np.concatenate([[d_log_slope, d_logit.sum()], d_sizes * sizes])

    sizes = np.log(clean_counts(positive) + clean_counts(negative) + 1.0)
    result = minimize(objective, np.concatenate([[0.0, start], sizes]), jac=True, method="BFGS")
    if not np.all(np.isfinite(result.x)):
        return None
    return (1.0 if fixed_slope else math.exp(min(result.x[0], 5.0))), float(result.x[1])


def _mean_pd_within(fit: tuple[float, float], centers: np.ndarray, counts: np.ndarray,
                    rate: float) -> bool:
    mean_pd = float((counts * expit(fit[0] * centers + fit[1])).sum() / counts.sum())
    return rate / MAX_RATE_FACTOR <= mean_pd <= rate * MAX_RATE_FACTOR


def _mean_matching_shift(logits: np.ndarray, counts: np.ndarray, rate: float) -> float:
    """The shift ``b`` with ``Σ counts·sigmoid(logits + b) / Σ counts = rate``."""
    def gap(shift: float) -> float:
        return float((counts * expit(logits + shift)).sum() / counts.sum() - rate)
    return float(brentq(gap, -50.0, 50.0))
