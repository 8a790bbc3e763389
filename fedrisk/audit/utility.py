"""Section 7: utility of the final model: AUC, Brier, KS and calibration, per bank and pooled.

Each bank reports its metrics on its held-out split plus additive statistics
(score histograms on the fixed logit grid, squared-error sum, calibration bins on
fixed PD edges); the consortium figures are computed from their sums, so no
per-row score leaves a bank.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrisk.models.histograms import (
    HISTOGRAM_BINS,
    histogram_auc,
    histogram_ks,
    score_histograms,
)
from fedrisk.models.metrics import discrimination_metrics

CALIBRATION_EDGES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def bank_utility(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Discrimination and calibration of the model on one bank's held-out split.

    Privacy meaning: only metrics and additive counts over bins leave the bank.
    """
    probabilities = 1 / (1 + np.exp(-logits))
    positive, negative = score_histograms(logits, labels)
    bins = np.clip(np.searchsorted(CALIBRATION_EDGES, probabilities, side="right") - 1, 0,
                   len(CALIBRATION_EDGES) - 2)
    n_bins = len(CALIBRATION_EDGES) - 1
    return {
        **discrimination_metrics(probabilities, labels),
        "n": len(labels), "n_default": int(labels.sum()),
        "squared_error_sum": float(((probabilities - labels) ** 2).sum()),
        "hist_pos": positive.tolist(), "hist_neg": negative.tolist(),
        "calibration": {
            "count": np.bincount(bins, minlength=n_bins).tolist(),
            "sum_pd": np.bincount(bins, probabilities, minlength=n_bins).tolist(),
            "sum_default": np.bincount(bins, labels, minlength=n_bins).tolist(),
        },
    }


def merge_utility(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Consortium AUC, Brier, KS and calibration from the banks' additive statistics."""
    positive = np.zeros(HISTOGRAM_BINS)
    negative = np.zeros(HISTOGRAM_BINS)
    n_bins = len(CALIBRATION_EDGES) - 1
    count, sum_pd, sum_default = np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins)
    squared, n = 0.0, 0
    for part in parts.values():
        positive += part["hist_pos"]
        negative += part["hist_neg"]
        squared += part["squared_error_sum"]
        n += part["n"]
        count += part["calibration"]["count"]
        sum_pd += part["calibration"]["sum_pd"]
        sum_default += part["calibration"]["sum_default"]
    return {
        "auc": histogram_auc(positive, negative),
        "brier": squared / max(n, 1),
        "ks": histogram_ks(positive, negative),
        "n": n, "n_default": int(positive.sum()),
        "calibration": calibration_table(count, sum_pd, sum_default),
        "per_bank": {bank: {**{k: part[k] for k in ("auc", "brier", "ks", "n", "n_default")},
                            "calibration": calibration_table(
                                *(np.asarray(part["calibration"][k], dtype=np.float64)
                                  for k in ("count", "sum_pd", "sum_default")))}
                     for bank, part in parts.items()},
    }


def calibration_table(count: np.ndarray, sum_pd: np.ndarray, sum_default: np.ndarray
                      ) -> list[dict[str, Any]]:
    """Mean predicted PD against observed default rate per fixed PD bin (non-empty bins)."""
    rows = []
    for i, n in enumerate(count):
        if n:
            rows.append({"bin": f"{CALIBRATION_EDGES[i]:g}-{CALIBRATION_EDGES[i + 1]:g}",
                         "n": int(n), "mean_pd": float(sum_pd[i] / n),
                         "observed": float(sum_default[i] / n)})
    return rows
