"""The crafted-model attack on a bank's evaluation release, measured at the bank.

A curious or compromised coordinator that knows one person's record can send a
"global model" that scores that row at an extreme logit and every other row low
(:func:`crafted_model`: ``hidden-units`` of twice the contract's features, then one
unit). The top bin of the bank's score histograms then holds the person's count when,
and only when, they are in the held-out split, in the histogram of their label.

:func:`measure_eval_attack` plays that attack against the release the bank actually
runs, at the bank, with its own rows: the public grid, the crafted model's real
scores, and the Gaussian mechanism at the bank's evaluation noise multiplier from its
ledger, many times with the target held out (members) and not (training rows). The
best threshold test's TPR and FPR give an ε lower bound (95% Clopper-Pearson) that
must stay at or below ε of one release; without DP the attack is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedrisk.models import ModelSpec, build_model
from fedrisk.models.histograms import ScoreGrid
from fedrisk.models.networks import PDNetwork
from fedrisk.privacy.accounting import compose_epsilon
from fedrisk.privacy.dpsgd import predict_logits
from fedrisk.privacy.release import gaussian_release

from .mia import epsilon_lower_bound

DEFAULT_TRIALS = 500
TARGET_LOGIT = 20.0  # far above any grid: the target lands in the top bin


def crafted_spec(n_features: int, prior_default_rate: float, n_grades: int = 0) -> ModelSpec:
    """The architecture of the attack: 2 units per feature, then the one detector unit."""
    return ModelSpec("mlp", n_features, (2 * n_features, 1), prior_default_rate, n_grades)


def crafted_model(spec: ModelSpec, target: np.ndarray) -> PDNetwork:
    """Weights whose logit is +20 on the encoded row ``target`` and -20 on every other row.

    Hidden units 2j and 2j+1 compute relu(x_j − t_j) and relu(t_j − x_j), which sum to
    |x_j − t_j|; the detector computes relu(1 − 1000·Σ_j |x_j − t_j|): 1 on the target
    (and exact copies of it), 0 on any row that differs by more than 0.001.
    """
    model = build_model(spec)
    n = spec.n_features
    with torch.no_grad():
        first, detector = model.body[0], model.body[2]
        first.weight.zero_()
        for j in range(n):
            first.weight[2 * j, j], first.weight[2 * j + 1, j] = 1.0, -1.0
        signs = np.tile([-1.0, 1.0], n)
        first.bias.copy_(torch.from_numpy((np.repeat(target, 2) * signs).astype(np.float32)))
        detector.weight.fill_(-1e3)
        detector.bias.fill_(1.0)
        model.head.weight.fill_(2 * TARGET_LOGIT)
        model.head.bias.fill_(-TARGET_LOGIT)
        if model.grade_head is not None:
            model.grade_head.weight.zero_()
            model.grade_head.bias.zero_()
    return model


def measure_eval_attack(held_out: np.ndarray, labels: np.ndarray, outside: np.ndarray,
                        grid: ScoreGrid, noise_multiplier: float, delta: float,
                        accountants: str | tuple[str, ...] = "rdp",
                        trials: int = DEFAULT_TRIALS, prior_default_rate: float = 0.5
                        ) -> dict[str, Any]:
    """Play the crafted-model attack ``trials`` times with the target held out and not.

    Args:
        held_out: the bank's held-out rows (encoded): the members.
        labels: their 0/1 labels (members alternate between defaulters and others).
        outside: rows of the bank not in the held-out split (its training rows).
        grid: the evaluation grid the bank releases on.
        noise_multiplier: the bank's evaluation noise (0: exact, non-private evaluation).
        delta: δ of the guarantee and of the lower bound.
        accountants: how ε of one release is computed (the largest over them).
        trials: releases with a member as target, and as many with a non-member.
        prior_default_rate: the contract's prior (only the crafted model's spec).

    Returns:
        TPR and FPR of the best threshold test on the top-bin count, the ε lower bound
        they prove, ε of one release (``None`` without noise) and ``passed``.

    """
    spec = crafted_spec(held_out.shape[1], prior_default_rate)
    # Members alternate between defaulters and others (the attacker also wants the label).
    pools = [p for p in (np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)) if len(p)]
    members = [held_out[pools[i % len(pools)][i // len(pools) % len(pools[i % len(pools)])]]
               for i in range(trials)]
    others = [outside[i % len(outside)] for i in range(trials)]
    member_scores = np.array([_top_count(spec, t, held_out, labels, grid, noise_multiplier)
                              for t in members])
    other_scores = np.array([_top_count(spec, t, held_out, labels, grid, noise_multiplier)
                             for t in others])
    bound = epsilon_lower_bound(member_scores, other_scores, delta)
    release = (compose_epsilon([(noise_multiplier, 1.0, 1)], delta, accountants)
               if noise_multiplier > 0 else None)
    return {
        "attack": "crafted global model: the target's row alone in the top score bin",
        "trials": trials, **best_test(member_scores, other_scores),
        "epsilon_lower_bound": bound["epsilon_lb"], "epsilon_release": release,
        "noise_multiplier": noise_multiplier, "delta": delta,
        "passed": None if release is None else bool(bound["epsilon_lb"] <= release),
    }


def best_test(member_scores: np.ndarray, other_scores: np.ndarray) -> dict[str, float]:
    """TPR and FPR of the threshold test "member if score ≥ t" with the largest TPR − FPR."""
    thresholds = np.unique(np.r_[member_scores, other_scores])
    tpr = (member_scores[None, :] >= thresholds[:, None]).mean(axis=1)
    fpr = (other_scores[None, :] >= thresholds[:, None]).mean(axis=1)
    best = int(np.argmax(tpr - fpr))
    return {"tpr": float(tpr[best]), "fpr": float(fpr[best]),
            "advantage": float(tpr[best] - fpr[best]), "threshold": float(thresholds[best])}


def _top_count(spec: ModelSpec, target: np.ndarray, held_out: np.ndarray, labels: np.ndarray,
               grid: ScoreGrid, noise_multiplier: float) -> float:
    """One release of the crafted model's histograms: the count in their top bins."""
    logits = predict_logits(crafted_model(spec, target), held_out)
    positive, negative = grid.histograms(logits, labels)
    return float(gaussian_release(positive, noise_multiplier)[-1]
                 + gaussian_release(negative, noise_multiplier)[-1])
