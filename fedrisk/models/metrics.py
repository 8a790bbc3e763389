"""Discrimination and calibration metrics of scores against labels, on one bank's rows.

Metrics the coordinator computes without rows (from score histograms) live in
:mod:`fedrisk.models.histograms`; its grid and histogram functions are re-exported here.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import brier_score_loss, roc_auc_score

from fedrisk.models.histograms import (  # noqa: F401 - re-exported
    HISTOGRAM_BINS,
    LOGIT_RANGE,
    histogram_auc,
    score_histograms,
)


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
    predicted = predicted_grades(scores, n_grades)
    metrics = {
        "grade_spearman": float(spearmanr(scores, grades).statistic),
        "grade_accuracy": float(np.mean(predicted == grades)),
        "grade_within_one": float(np.mean(np.abs(predicted - grades) <= 1)),
    }
    for level in np.unique(grades):
        metrics[f"grade_acc_{level:02d}"] = float(np.mean(predicted[grades == level] == level))
    return metrics


def predicted_grades(scores: np.ndarray, n_grades: int) -> np.ndarray:
    """Grade level (0 … n_grades − 1) nearest to each grade score on the 0-1 scale."""
    return np.clip(np.rint(scores * (n_grades - 1)), 0, n_grades - 1).astype(np.int64)
