"""Consortium AUC from per-bank score histograms matches the AUC over pooled rows."""

import numpy as np
from sklearn.metrics import roc_auc_score

from fedrisk.models.metrics import histogram_auc, ks_statistic, score_histograms


def test_pooled_histogram_auc_matches_exact_auc_over_all_rows():
    rng = np.random.default_rng(0)
    positives = np.zeros(256, dtype=np.int64)
    negatives = np.zeros(256, dtype=np.int64)
    all_logits, all_labels = [], []
    for shift in (-3.0, -2.0, -1.0):  # three banks with different score distributions
        labels = (rng.random(2000) < 0.1).astype(float)
        logits = rng.normal(shift + 1.2 * labels, 1.0)
        pos, neg = score_histograms(logits, labels)
        positives += pos
        negatives += neg
        all_logits.append(logits)
        all_labels.append(labels)
    exact = roc_auc_score(np.concatenate(all_labels), np.concatenate(all_logits))
    assert abs(histogram_auc(positives, negatives) - exact) < 0.002


def test_ks_separates_distributions():
    labels = np.array([0, 0, 0, 1, 1, 1], dtype=float)
    assert ks_statistic(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), labels) == 1.0
