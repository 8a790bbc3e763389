"""Discrimination and calibration metrics, including AUC from score histograms.

A consortium AUC must not need per-row scores from any bank. Each bank sends two
histograms of its model scores on a fixed logit grid (one for defaulters, one for
non-defaulters); summing them across banks and reading the ROC off the pooled
histograms gives the pooled AUC up to ties within a bin.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import brier_score_loss, roc_auc_score

HISTOGRAM_BINS = 256
LOGIT_RANGE = (-8.0, 8.0)


def score_histograms(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count logits per fixed bin, separately for positives (defaults) and negatives."""
    low, high = LOGIT_RANGE
    clipped = np.clip(logits, low, high - 1e-9)
    bins = ((clipped - low) / (high - low) * HISTOGRAM_BINS).astype(np.int64)
    positive = np.bincount(bins[labels == 1], minlength=HISTOGRAM_BINS)
    negative = np.bincount(bins[labels == 0], minlength=HISTOGRAM_BINS)
    return positive, negative


def histogram_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC from binned score counts; ties within a bin count one half."""
    n_pos, n_neg = positive.sum(), negative.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    negatives_below = np.cumsum(negative) - negative
    wins = (positive * (negatives_below + 0.5 * negative)).sum()
    return float(wins / (n_pos * n_neg))


def ks_statistic(scores: np.ndarray, labels: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between score distributions of defaulters and others."""
    order = np.argsort(scores)
    sorted_labels = labels[order]
    cdf_pos = np.cumsum(sorted_labels) / max(sorted_labels.sum(), 1)
    cdf_neg = np.cumsum(1 - sorted_labels) / max((1 - sorted_labels).sum(), 1)
    return float(np.max(np.abs(cdf_pos - cdf_neg)))


def discrimination_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC, Brier score and KS of default probabilities against 0/1 labels."""
    both_classes = 0 < labels.sum() < len(labels)
    return {
        "auc": float(roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
        "brier": float(brier_score_loss(labels, probabilities)),
        "ks": ks_statistic(probabilities, labels),
    }


def grade_metrics(scores: np.ndarray, grades: np.ndarray, n_grades: int) -> dict[str, float]:
    """Quality of grade scores (0 best … 1 worst) against true grade indices (-1 = unknown).

    Returns the Spearman rank correlation, exact accuracy, accuracy within one grade,
    and ``grade_acc_NN``: the exact accuracy among rows whose true grade is level NN.
    """
    known = grades >= 0
    scores, grades = scores[known], grades[known]
    if len(grades) < 2:
        return {}
    predicted = np.clip(np.rint(scores * (n_grades - 1)), 0, n_grades - 1).astype(np.int64)
    metrics = {
        "grade_spearman": float(spearmanr(scores, grades).statistic),
        "grade_accuracy": float(np.mean(predicted == grades)),
        "grade_within_one": float(np.mean(np.abs(predicted - grades) <= 1)),
    }
    for level in np.unique(grades):
        metrics[f"grade_acc_{level:02d}"] = float(np.mean(predicted[grades == level] == level))
    return metrics
