"""Section 3: membership inference against a model, and the empirical ε lower bound.

Members are a bank's train split, non-members its held-out split. Attacks score
each record; a higher score means "more likely a member":

- ``loss``: the loss-threshold attack (Yeom et al. 2018), score = -loss.
- ``rmia``: RMIA (Zarifzadeh et al. 2024) with reference models trained like the
  target on halves of the bank's own data, in complementary pairs so that every
  record is a member of exactly half of them (the paper's online setting). With a
  fixed population sample and gamma = 1, RMIA's score is a monotone function of
  ``p(x|target) / mean_k p(x|reference_k)``, so that ratio (in logs) is the score.
- ``lira_offline``: offline LiRA (Carlini et al. 2022): logit-scaled confidence of
  the target minus its mean over the reference models that did not train on x.

(ε, δ)-DP implies TPR ≤ e^ε·FPR + δ and TNR ≤ e^ε·FNR + δ for *any* test, so
each threshold with Clopper-Pearson bounds gives ε_LB = ln((TPR_low − δ)/FPR_high)
(and the mirrored bound); the audit reports the largest over thresholds and attacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn
from torch.nn import functional

from fedrisk.models import ModelSpec, build_model, model_arrays, set_model_arrays
from fedrisk.privacy.accounting import DPSchedule

from .trainer import TrainFn, TrainPlan

ROC_POINTS = 120


@dataclass(frozen=True)
class ReferenceSetup:
    """How the bank trains its reference models "the same way" as the target.

    Attributes:
        spec: the agreed architecture; every reference starts from ``build_model(spec, seed)``.
        init_seed: the run's public initialization seed.
        plan: the run's local optimizer settings.
        rounds: federated rounds the bank joined (each is one local training phase).
        schedule_for: DP schedule for a reference dataset of ``n`` records (``None``
            for a non-private run): same target ε, δ, epochs and batch size as the run.

    """

    spec: ModelSpec
    init_seed: int
    plan: TrainPlan
    rounds: int
    schedule_for: Callable[[int], DPSchedule | None]


def true_label_logprob(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Log p(y|x) of the true label under the model (= -binary cross-entropy)."""
    signed = torch.as_tensor(np.where(labels > 0.5, logits, -logits))
    return functional.logsigmoid(signed).numpy().astype(np.float64)


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's logit-scaled confidence log(p/(1-p)) of the true label (= ±logit)."""
    return np.where(labels > 0.5, logits, -logits).astype(np.float64)


@torch.no_grad()
def model_logits(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """Logits of encoded rows (eval mode, no gradients)."""
    model.eval()
    return model(torch.as_tensor(features, dtype=torch.float32)).numpy().astype(np.float64)


def reference_masks(labels: np.ndarray, n_models: int, seed: int) -> np.ndarray:
    """Training-set membership of each reference model, ``(n_models, n_records)`` booleans.

    Models come in complementary pairs of label-stratified halves, so every record
    trains exactly half of the references (and is "out" for the other half).
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_models, len(labels)), dtype=bool)
    for pair in range(0, n_models, 2):
        half = np.zeros(len(labels), dtype=bool)
        for value in (0.0, 1.0):
            rows = rng.permutation(np.flatnonzero(labels == value))
            half[rows[: len(rows) // 2]] = True
        masks[pair] = half
        if pair + 1 < n_models:
            masks[pair + 1] = ~half
    return masks


def train_references(setup: ReferenceSetup, train_fn: TrainFn, features: np.ndarray,
                     labels: np.ndarray, masks: np.ndarray, seed: int,
                     grades: np.ndarray | None = None) -> np.ndarray:
    """Train one reference model per mask like the target; return their logits on all rows.

    Privacy meaning: references run on the bank's own host on its own records, with
    the run's DP settings, so the attack is the one a strong insider could mount.
    """
    logits = np.zeros(masks.shape, dtype=np.float64)
    for index, mask in enumerate(masks):
        schedule: DPSchedule | None = setup.schedule_for(int(mask.sum()))
        weights = list(model_arrays(build_model(setup.spec, setup.init_seed)).values())
        for round_ in range(setup.rounds):  # a fresh module per round, as the banks do
            model = build_model(setup.spec, setup.init_seed)
            set_model_arrays(model, weights)
            extra = {} if grades is None else {"grades": grades[mask]}
            train_fn(model, features[mask], labels[mask], setup.plan, schedule,
                     seed * 1009 + index * 101 + round_, **extra)
            weights = list(model_arrays(model).values())
        final = build_model(setup.spec, setup.init_seed)
        set_model_arrays(final, weights)
        logits[index] = model_logits(final, features)
    return logits


def attack_scores(target_logits: np.ndarray, labels: np.ndarray,
                  reference_logits: np.ndarray | None, masks: np.ndarray | None
                  ) -> dict[str, np.ndarray]:
    """Membership scores of every record under each attack (higher = more likely member)."""
    scores = {"loss": true_label_logprob(target_logits, labels)}
    if reference_logits is None or masks is None or not len(reference_logits):
        return scores
    target_lp = scores["loss"]
    ref_p = np.exp(np.stack([true_label_logprob(r, labels) for r in reference_logits]))
    scores["rmia"] = target_lp - np.log(np.clip(ref_p.mean(axis=0), 1e-300, None))
    ref_conf = np.stack([logit_confidence(r, labels) for r in reference_logits])
    out = ~masks
    out_count = np.maximum(out.sum(axis=0), 1)
    mu_out = (ref_conf * out).sum(axis=0) / out_count
    residual = (ref_conf - mu_out) * out
    sigma = float(np.sqrt((residual ** 2).sum() / max(out.sum() - 1, 1))) or 1.0
    scores["lira_offline"] = (logit_confidence(target_logits, labels) - mu_out) / sigma
    return scores


def clopper_pearson(successes: np.ndarray, trials: int, alpha: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided exact (Clopper-Pearson) bounds of a binomial rate, each tail ``alpha / 2``."""
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(k > 0, beta.ppf(alpha / 2, k, trials - k + 1), 0.0)
        high = np.where(k < trials, beta.ppf(1 - alpha / 2, k + 1, trials - k), 1.0)
    return np.nan_to_num(low), np.nan_to_num(high, nan=1.0)


def epsilon_lower_bound(member_scores: np.ndarray, nonmember_scores: np.ndarray,
                        delta: float, confidence: float = 0.95) -> dict:
    """Largest ε that the attack *proves* at ``confidence``, over all thresholds.

    Privacy meaning: if (ε, δ)-DP held with ε below this value, an attack this good
    would occur with probability under 1 − ``confidence`` (per threshold). The
    threshold is chosen on the same scores, which can only push the bound up, so a
    DP claim that stays above it passes conservatively.
    """
    members = np.asarray(member_scores, dtype=np.float64)
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64)
    n_in, n_out = len(members), len(nonmembers)
    thresholds = np.unique(np.concatenate([members, nonmembers]))
    tp = n_in - np.searchsorted(np.sort(members), thresholds, side="left")
    fp = n_out - np.searchsorted(np.sort(nonmembers), thresholds, side="left")
    alpha = 1 - confidence
    tpr_low, _ = clopper_pearson(tp, n_in, alpha)
    _, fpr_high = clopper_pearson(fp, n_out, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = np.log((tpr_low - delta) / fpr_high)
        mirrored = np.log(((1 - fpr_high) - delta) / (1 - tpr_low))
    forward = np.where(tpr_low > delta, forward, -np.inf)
    mirrored = np.where((1 - fpr_high) > delta, mirrored, -np.inf)
    best = int(np.argmax(np.maximum(forward, mirrored)))
    value = float(max(forward[best], mirrored[best], 0.0))
    return {
        "epsilon_lb": value if np.isfinite(value) else 0.0,
        "threshold": float(thresholds[best]),
        "direction": "tpr/fpr" if forward[best] >= mirrored[best] else "tnr/fnr",
        "tp": int(tp[best]), "fp": int(fp[best]), "n_members": n_in, "n_nonmembers": n_out,
        "tpr_low": float(tpr_low[best]), "fpr_high": float(fpr_high[best]),
        "confidence": confidence, "delta": delta,
    }


def roc_summary(member_scores: np.ndarray, nonmember_scores: np.ndarray, delta: float) -> dict:
    """AUC, TPR at 1% and 0.1% FPR, a thinned log-scale ROC, advantage and ε lower bound.

    Privacy meaning: AUC 0.5 and TPR ≈ FPR mean the model does not tell members
    from non-members; ``advantage`` = max(TPR − FPR) is the attacker's edge.
    """
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    scores = np.r_[member_scores, nonmember_scores]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    auc = float(roc_auc_score(labels, scores))
    return {
        "auc": auc,
        "auc_se": auc_standard_error(auc, len(member_scores), len(nonmember_scores)),
        "tpr_at_1pct_fpr": _tpr_at(fpr, tpr, 0.01),
        "tpr_at_01pct_fpr": _tpr_at(fpr, tpr, 0.001),
        "fpr_resolution": 1 / max(len(nonmember_scores), 1),
        "advantage": float(np.max(tpr - fpr)),
        "roc": _thin_roc(fpr, tpr),
        "epsilon_lb": epsilon_lower_bound(member_scores, nonmember_scores, delta),
    }


def auc_standard_error(auc: float, n_members: int, n_nonmembers: int) -> float:
    """Hanley-McNeil standard error of an AUC: how far from 0.5 chance alone can take it."""
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    variance = (auc * (1 - auc) + (n_members - 1) * (q1 - auc ** 2)
                + (n_nonmembers - 1) * (q2 - auc ** 2)) / max(n_members * n_nonmembers, 1)
    return float(math.sqrt(max(variance, 0.0)))


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR among thresholds whose FPR is at most ``target``."""
    allowed = fpr <= target + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def _thin_roc(fpr: np.ndarray, tpr: np.ndarray) -> dict[str, list[float]]:
    """At most ``ROC_POINTS`` points, log-spaced in FPR: a curve, not per-record scores."""
    grid = np.unique(np.r_[0.0, np.logspace(-4, 0, ROC_POINTS - 1)])
    values = [_tpr_at(fpr, tpr, g) for g in grid]
    return {"fpr": [round(float(g), 6) for g in grid], "tpr": [round(v, 6) for v in values]}


def audit_model(target_logits: np.ndarray, labels: np.ndarray, is_member: np.ndarray,
                reference_logits: np.ndarray | None, masks: np.ndarray | None,
                delta: float) -> dict:
    """Run every attack on one target model; return per-attack ROC summaries and the best.

    Only aggregates leave this function: no per-record score, loss or label.
    """
    attacks = {}
    for name, score in attack_scores(target_logits, labels, reference_logits, masks).items():
        attacks[name] = roc_summary(score[is_member], score[~is_member], delta)
    strongest = max(attacks, key=lambda a: attacks[a]["auc"])
    bound = max(attacks, key=lambda a: attacks[a]["epsilon_lb"]["epsilon_lb"])
    loss = -true_label_logprob(target_logits, labels)
    return {
        "attacks": attacks,
        "strongest_attack": strongest,
        "auc": attacks[strongest]["auc"],
        "auc_se": attacks[strongest]["auc_se"],
        "tpr_at_1pct_fpr": max(a["tpr_at_1pct_fpr"] for a in attacks.values()),
        "tpr_at_01pct_fpr": max(a["tpr_at_01pct_fpr"] for a in attacks.values()),
        "advantage": max(a["advantage"] for a in attacks.values()),
        "epsilon_lower_bound": attacks[bound]["epsilon_lb"]["epsilon_lb"],
        "epsilon_lower_bound_attack": bound,
        "mean_loss_members": float(loss[is_member].mean()),
        "mean_loss_nonmembers": float(loss[~is_member].mean()),
        "n_members": int(is_member.sum()), "n_nonmembers": int((~is_member).sum()),
    }
