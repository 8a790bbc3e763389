"""One-run canary audit of a bank's real training mechanism, in a shadow run at the bank.

Membership inference on a bank's natural rows has almost no statistical power (a
non-private run and a DP run at ε = 3 look the same, see section 3), so it cannot show
that a bank added no noise. This audit can: it replays, at the bank and on the bank's
own training rows, the mechanism its verified ledger says it ran (σ, sampling rate,
clipping bound, steps and rounds), with ``m`` canaries each put in the run with
probability 1/2 by the secret generator, guesses which were in from what the run
produced, and turns the guesses into an ε lower bound at 95% confidence
(:mod:`fedrisk.audit.one_run`: Steinke, Nasr, Jagielski 2023). The shadow model is
never released and never leaves the bank; only the bound and its counts do.

- **White-box (headline)**: Dirac gradient canaries. Each canary is a record whose
  gradient is ``CANARY_NORM × C`` on one coordinate of an audit-only layer (a
  ``nn.Linear`` attached to the shadow model that no record's forward pass runs, so the
  bank's records contribute exactly 0 there and do not interfere) and 0 elsewhere. The
  canaries go through the banks' own DP-SGD (:class:`fedrisk.privacy.dpsgd.GradientCanaries`):
  the same Poisson sampling, the same clipping call as the records, the same noise.
  The auditor sees every step's noisy sum (as a coordinator sees every round's
  update); a canary's score is the likelihood ratio of its coordinate's steps, "in"
  (a clipped ``C`` in each step with probability ``q``, plus ``N(0, σ²C²)``) against
  "out" (noise only), at the ledger's σ and q. A mechanism that does not clip adds
  ``CANARY_NORM × C``; one without noise shows each canary's exact count: both
  separate the canaries perfectly and the bound exceeds any claim.
- **Black-box**: input canaries, crafted records (mislabeled outliers: a "default"
  label far from every real row, in random directions), trained into the shadow model
  with the bank's rows; the score is how much training raised the canary's logit.
  This is all an attacker holding only the final model can do: a weaker bound,
  reported beside the white-box one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrisk.models import ModelSpec, build_model
from fedrisk.privacy.accounting import DPSchedule
from fedrisk.privacy.dpsgd import GradientCanaries, secret_generator

from .dp_spec import safe_epsilon
from .mia import model_logits
from .one_run import one_run_bound
from .trainer import TrainFn, TrainPlan

DEFAULT_CANARIES = 50_000
DEFAULT_INPUT_CANARIES = 1_000
DEFAULT_CONFIDENCE = 0.95
CANARY_NORM = 1e3
"""A gradient canary's norm before clipping, in units of C: far above C, so that a
mechanism that does not clip shows it (a clipped canary adds C to its coordinate)."""
OUTLIER_RADIUS = 3.0
"""An input canary's distance from the origin, in multiples of the largest real row's."""


@dataclass(frozen=True)
class ShadowRun:
    """The mechanism to replay, as the bank's ledger and the run config state it.

    Attributes:
        spec: the run's model architecture; the shadow starts from ``build_model(spec,
            init_seed)``, the run's public initialization.
        init_seed: the run's public seed (initialization; order of non-private batches).
        plan: the run's local optimizer settings (its ``max_grad_norm`` is C).
        phases: one DP phase per federated round, from the verified ledger (σ, q, steps);
            None for a non-private run.
        rounds: rounds to replay without DP (``phases`` sets them under DP).
        delta: δ of the claim under test.

    """

    spec: ModelSpec
    init_seed: int
    plan: TrainPlan
    phases: tuple[DPSchedule, ...] | None
    rounds: int
    delta: float

    @property
    def noise_multiplier(self) -> float:
        """The smallest σ of the phases (0 without DP): what the score assumes."""
        return min((p.noise_multiplier for p in self.phases), default=0.0) if self.phases \
            else 0.0

    def schedules(self, n_rows: int) -> list[tuple[TrainPlan, DPSchedule | None]]:
        """Per round: the plan and the DP schedule for a training set of ``n_rows`` rows.

        Under DP each round keeps its ledger σ and number of epochs; the sample rate is
        ``1 / ⌈n / batch⌉``, as a bank of ``n_rows`` rows samples (the ledger's own rate
        for the bank's rows alone).
        """
        if self.phases is None:
            return [(self.plan, None)] * self.rounds
        per_epoch = self.plan.steps_per_epoch(n_rows)
        return [(replace(self.plan, local_epochs=max(round(p.steps_per_round * p.sample_rate), 1)),
                 DPSchedule(1 / per_epoch,
                            max(round(p.steps_per_round * p.sample_rate), 1) * per_epoch,
                            p.noise_multiplier))
                for p in self.phases]

    def epsilon(self, n_rows: int) -> float | None:
        """ε at δ (Opacus PRV, RDP fallback) of the replay on ``n_rows`` rows; None without DP."""
        if self.phases is None:
            return None
        history = [(s.noise_multiplier, s.sample_rate, s.steps_per_round)
                   for _, s in self.schedules(n_rows) if s is not None]
        value = safe_epsilon(history, self.delta, "prv")
        return value if value is not None else safe_epsilon(history, self.delta, "rdp")


def white_box_audit(train_fn: TrainFn, shadow: ShadowRun, features: np.ndarray,
                    labels: np.ndarray, grades: np.ndarray | None = None,
                    canaries: int = DEFAULT_CANARIES, confidence: float = DEFAULT_CONFIDENCE,
                    rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Dirac gradient canaries through the bank's DP-SGD on its rows: the ε lower bound.

    Privacy meaning: if the bank's training path really were (ε, δ)-DP at the ledger's
    σ, q and steps, a bound above ε would appear with probability at most
    ``1 − confidence``. ``rng`` draws which canaries are in (default: the secret
    generator; tests may pass a seeded one).
    """
    rng = rng or secret_generator()
    included = rng.random(canaries) < 0.5
    width = max(math.isqrt(max(canaries - 1, 0)) + 1, 1)
    layer = nn.Linear(width, width, bias=False)
    nn.init.zeros_(layer.weight)
    clip = shadow.plan.max_grad_norm
    rows, columns = np.divmod(np.flatnonzero(included), width)
    steps: list[np.ndarray] = []

    def observe(step_sum: torch.Tensor) -> None:
        steps.append(step_sum.reshape(-1)[:canaries].numpy().astype(np.float64) / clip)

    hook = GradientCanaries(
        layer, torch.from_numpy(_one_hot(columns, width) * np.float32(CANARY_NORM * clip)),
        torch.from_numpy(_one_hot(rows, width)), observe)
    model = build_model(shadow.spec, shadow.init_seed)
    model.add_module("audit_canaries", layer)
    rates = []
    for round_, (plan, schedule) in enumerate(shadow.schedules(len(labels))):
        before = len(steps)
        train_fn(model, features, labels, plan, schedule, shadow.init_seed + round_, grades,
                 canaries=hook)
        rates += [schedule.sample_rate if schedule else plan.batch_size / len(labels)] * (
            len(steps) - before)
    signal = np.stack(steps) if steps else np.zeros((0, canaries))
    scores = _likelihood_ratio(signal, np.asarray(rates), shadow.noise_multiplier)
    result = one_run_bound(scores, included, shadow.delta, confidence)
    return result | {
        "variant": "white-box: Dirac gradient canaries, every step observed",
        "steps": len(steps), "canary_norm": CANARY_NORM, "noise_multiplier":
        shadow.noise_multiplier, "score": "likelihood ratio" if shadow.noise_multiplier > 0
        else "sum of the canary's coordinate",
        "mean_signal_in": _mean(signal, included), "mean_signal_out": _mean(signal, ~included),
    }


def black_box_audit(train_fn: TrainFn, shadow: ShadowRun, features: np.ndarray,
                    labels: np.ndarray, grades: np.ndarray | None = None,
                    canaries: int = DEFAULT_INPUT_CANARIES,
                    confidence: float = DEFAULT_CONFIDENCE,
                    rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Input canaries (mislabeled outliers) trained with the bank's rows; scored by the model.

    Privacy meaning: a bound on what the trained model alone reveals about a record, for
    the worst records an attacker could craft; ``epsilon_claim`` is the accounted ε of
    this replay (its training set holds the included canaries too, so its sample rate
    follows ``n`` + included, as a bank's would).
    """
    rng = rng or secret_generator()
    included = rng.random(canaries) < 0.5
    directions = rng.standard_normal((canaries, features.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radius = OUTLIER_RADIUS * float(np.linalg.norm(features, axis=1).max(initial=1.0))
    crafted = (directions * radius).astype(np.float32)
    train_x = np.concatenate([features, crafted[included]]).astype(np.float32)
    train_y = np.concatenate([labels, np.ones(int(included.sum()), dtype=labels.dtype)])
    train_g = None if grades is None else np.concatenate(
        [grades, np.full(int(included.sum()), -1, dtype=grades.dtype)])
    model = build_model(shadow.spec, shadow.init_seed)
    before = model_logits(model, crafted)
    for round_, (plan, schedule) in enumerate(shadow.schedules(len(train_y))):
        train_fn(model, train_x, train_y, plan, schedule, shadow.init_seed + round_, train_g)
    scores = model_logits(model, crafted) - before
    result = one_run_bound(scores, included, shadow.delta, confidence)
    return result | {
        "variant": "black-box: input canaries (mislabeled outliers), final model only",
        "epsilon_claim": shadow.epsilon(len(train_y)), "outlier_radius": radius,
        "mean_score_in": _mean(scores[None], included),
        "mean_score_out": _mean(scores[None], ~included),
    }


def _one_hot(positions: np.ndarray, width: int) -> np.ndarray:
    matrix = np.zeros((len(positions), width), dtype=np.float32)
    matrix[np.arange(len(positions)), positions] = 1.0
    return matrix


def _likelihood_ratio(signal: np.ndarray, rates: np.ndarray, sigma: float) -> np.ndarray:
    """Per canary, log P(its steps | in) / P(its steps | out), in units of C.

    In: each step adds the clipped canary (1) with probability q, then N(0, σ²); out:
    N(0, σ²) only. Without noise (σ = 0: no DP claim) the plain sum is the score.
    """
    if sigma <= 0 or not len(signal):
        return signal.sum(axis=0)
    log_in = np.log(rates)[:, None] + (signal - 0.5) / sigma ** 2
    return np.logaddexp(np.log1p(-np.minimum(rates, 1 - 1e-12))[:, None], log_in).sum(axis=0)


def _mean(signal: np.ndarray, mask: np.ndarray) -> float | None:
    return float(signal[:, mask].mean()) if signal.size and mask.any() else None
