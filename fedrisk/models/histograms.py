"""Score histograms on a public grid, and every metric read off them.

A consortium AUC must not need per-row scores from any bank. Each bank counts its
model's logits per bin of a public grid, separately for defaulters (positives) and
non-defaulters (negatives); AUC, Brier score, log loss and KS are then computed from
the counts alone, per bank or pooled over banks. Under DP the counts are noisy
(possibly negative) integers: every function here takes such counts as they are, and
:func:`clean_counts` is the one post-processing step (negative counts to zero).

Two grids exist: the fine grid (256 bins on logits -8..8) of exact, non-private
evaluation, and the coarse DP grid around the contract's public prior default rate
(:func:`eval_grid`), where few bins keep the noise in the AUC small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HISTOGRAM_BINS = 256  # bins of the fine grid; also the most bins any grid may have
LOGIT_RANGE = (-8.0, 8.0)
GRADE_ERROR_RANGE = 3  # grade errors are counted in bins -3 (or less) .. +3 (or more)


@dataclass(frozen=True)
class ScoreGrid:
    """Equal-width bins of logits on ``[low, high]``; logits outside fall in the end bins.

    Attributes:
        low / high: logit edges of the first and last bin.
        bins: number of bins. The grid is public: it depends on no bank's data.

    """

    low: float
    high: float
    bins: int

    def bin_of(self, logits: np.ndarray) -> np.ndarray:
        """Bin index of each logit."""
        width = (self.high - self.low) / self.bins
        index = np.floor((np.asarray(logits, dtype=np.float64) - self.low) / width)
        return np.clip(index, 0, self.bins - 1).astype(np.int64)

    def centers(self) -> np.ndarray:
        """Logit at the middle of each bin (of the end bins' nominal width)."""
        width = (self.high - self.low) / self.bins
        return self.low + width * (np.arange(self.bins) + 0.5)

    def histograms(self, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts per bin of positives (defaults) and of negatives."""
        bins = self.bin_of(logits)
        return (np.bincount(bins[labels == 1], minlength=self.bins),
                np.bincount(bins[labels == 0], minlength=self.bins))


FINE_GRID = ScoreGrid(*LOGIT_RANGE, HISTOGRAM_BINS)


def eval_grid(prior_default_rate: float, bins: int, logit_low: float,
              logit_high: float) -> ScoreGrid:
    """The DP evaluation grid: ``bins`` bins from logit(prior) + ``logit_low`` to + ``logit_high``.

    Built from public facts only (the contract's prior and the run config), so every
    bank and the coordinator build the same grid.
    """
    center = math.log(prior_default_rate / (1 - prior_default_rate))
    return ScoreGrid(center + logit_low, center + logit_high, bins)


def score_histograms(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of logits per bin of the fine grid, for positives (defaults) and negatives."""
    return FINE_GRID.histograms(logits, labels)


def clean_counts(counts: np.ndarray) -> np.ndarray:
    """Noisy counts as counts: negative values (noise on near-empty bins) become 0."""
    return np.clip(np.asarray(counts, dtype=np.float64), 0, None)


def histogram_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC from binned score counts; ties within a bin count one half."""
    positive, negative = clean_counts(positive), clean_counts(negative)
    n_pos, n_neg = positive.sum(), negative.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    negatives_below = np.cumsum(negative) - negative
    wins = (positive * (negatives_below + 0.5 * negative)).sum()
    return float(wins / (n_pos * n_neg))


def histogram_auc_sd(positive: np.ndarray, negative: np.ndarray, noise_sd: float,
                     draws: int = 200) -> float:
    """Standard deviation of :func:`histogram_auc` due to Gaussian noise of ``noise_sd`` per bin.

    A parametric bootstrap: fresh noise of the same scale is added to the (cleaned)
    counts ``draws`` times and the AUC read again, clipping included. Post-processing of
    released counts (costs no ε); seeded, so the same counts give the same answer.
    """
    positive, negative = clean_counts(positive), clean_counts(negative)
    if positive.sum() == 0 or negative.sum() == 0:
        return float("nan")
    rng = np.random.default_rng(0)
    values = [histogram_auc(positive + rng.normal(0, noise_sd, positive.shape),
                            negative + rng.normal(0, noise_sd, negative.shape))
              for _ in range(draws)]
    return float(np.nanstd(values))


def histogram_brier(positive: np.ndarray, negative: np.ndarray, grid: ScoreGrid) -> float:
    """Brier score with each row's PD taken at its bin's center."""
    positive, negative = clean_counts(positive), clean_counts(negative)
    total = positive.sum() + negative.sum()
    if total == 0:
        return float("nan")
    pd = 1 / (1 + np.exp(-grid.centers()))
    return float(((positive * (1 - pd) ** 2).sum() + (negative * pd ** 2).sum()) / total)


def histogram_log_loss(positive: np.ndarray, negative: np.ndarray, grid: ScoreGrid) -> float:
    """Mean log loss with each row's PD taken at its bin's center."""
    positive, negative = clean_counts(positive), clean_counts(negative)
    total = positive.sum() + negative.sum()
    if total == 0:
        return float("nan")
    logits = grid.centers()
    # -log σ(z) = softplus(-z) and -log(1 - σ(z)) = softplus(z), computed stably.
    loss = (positive * np.logaddexp(0, -logits)).sum() + (negative * np.logaddexp(0, logits)).sum()
    return float(loss / total)


def histogram_ks(positive: np.ndarray, negative: np.ndarray) -> float:
    """KS distance between defaulters' and others' score distributions from binned counts."""
    positive, negative = clean_counts(positive), clean_counts(negative)
    cdf_pos = np.cumsum(positive) / max(positive.sum(), 1)
    cdf_neg = np.cumsum(negative) / max(negative.sum(), 1)
    return float(np.max(np.abs(cdf_pos - cdf_neg)))


def histogram_metrics(positive: np.ndarray, negative: np.ndarray, grid: ScoreGrid,
                      noise_sd: float = 0.0) -> dict[str, float]:
    """Everything read off one pair of (possibly noisy) histograms.

    Returns ``auc``, ``auc_noise_sd`` (0 for exact counts), ``brier``, ``ks``, ``log_loss``,
    ``n`` and ``n_default`` (noisy totals of a noisy release, at least 0).
    """
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    return {
        "auc": histogram_auc(positive, negative),
        "auc_noise_sd": histogram_auc_sd(positive, negative, noise_sd) if noise_sd else 0.0,
        "brier": histogram_brier(positive, negative, grid),
        "ks": histogram_ks(positive, negative),
        "log_loss": histogram_log_loss(positive, negative, grid),
        "n": max(0, round(positive.sum() + negative.sum())),
        "n_default": max(0, round(positive.sum())),
    }


def grade_error_histogram(predicted: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """Counts of (predicted − true) grade level, clipped to ±``GRADE_ERROR_RANGE``.

    Rows of unknown grade (-1) are left out. Bin ``k`` holds error ``k − GRADE_ERROR_RANGE``.
    """
    known = grades >= 0
    error = np.clip(predicted[known] - grades[known], -GRADE_ERROR_RANGE, GRADE_ERROR_RANGE)
    return np.bincount(error + GRADE_ERROR_RANGE, minlength=2 * GRADE_ERROR_RANGE + 1)


def grade_error_metrics(counts: np.ndarray) -> dict[str, float]:
    """Exact accuracy and accuracy within one level from a (noisy) grade error histogram."""
    counts = clean_counts(counts)
    total = counts.sum()
    if total == 0:
        return {}
    middle = GRADE_ERROR_RANGE
    return {"grade_accuracy": float(counts[middle] / total),
            "grade_within_one": float(counts[middle - 1:middle + 2].sum() / total)}


def histogram_entries(positive: np.ndarray, negative: np.ndarray,
                      prefix: str = "hist") -> dict[str, int]:
    """Metric entries ``<prefix>_pos_###`` / ``<prefix>_neg_###`` of a pair of histograms."""
    entries = {f"{prefix}_pos_{i:03d}": int(c) for i, c in enumerate(positive)}
    return entries | {f"{prefix}_neg_{i:03d}": int(c) for i, c in enumerate(negative)}


def histograms_from(metrics: dict, prefix: str = "hist") -> tuple[np.ndarray, np.ndarray] | None:
    """The pair of histograms in metric entries written by :func:`histogram_entries`."""
    positive = _counts(metrics, f"{prefix}_pos_")
    negative = _counts(metrics, f"{prefix}_neg_")
    if positive is None or negative is None or len(positive) != len(negative):
        return None
    return positive, negative


def grade_error_entries(counts: np.ndarray) -> dict[str, int]:
    """Metric entries ``grade_error_###`` of a grade error histogram."""
    return {f"grade_error_{i:03d}": int(c) for i, c in enumerate(counts)}


def grade_errors_from(metrics: dict) -> np.ndarray | None:
    """The grade error histogram in metric entries written by :func:`grade_error_entries`."""
    counts = _counts(metrics, "grade_error_")
    return counts if counts is not None and len(counts) == 2 * GRADE_ERROR_RANGE + 1 else None


def _counts(metrics: dict, prefix: str) -> np.ndarray | None:
    indexed = {int(key[len(prefix):]): int(value) for key, value in metrics.items()
               if key.startswith(prefix) and key[len(prefix):].isdigit()}
    if not indexed or sorted(indexed) != list(range(len(indexed))):
        return None
    return np.array([indexed[i] for i in range(len(indexed))], dtype=np.int64)
