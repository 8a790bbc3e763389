"""DP-SGD of one bank with Opacus (Poisson sampling, per-record clipping, Gaussian noise).

The same functions train the federated rounds, the personalization phase, the
local-only baselines, the centralized reference and the audit's reference models,
so every comparison is like for like and the audit checks the mechanism banks run.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrisk.privacy.accounting import DPSchedule


@dataclass(frozen=True)
class TrainingSettings:
    """Optimizer settings of local training.

    Attributes:
        local_epochs: passes over the bank's train split per round (in expectation under
            Poisson sampling).
        batch_size: expected batch size; sets the sampling rate ``batch_size / n``.
        learning_rate / momentum: SGD settings.
        max_grad_norm: L2 bound each record's gradient is clipped to (DP sensitivity).
        proximal_mu: FedProx proximal term weight (0 = plain FedAvg local training).

    """

    local_epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 0.1
    momentum: float = 0.9
    max_grad_norm: float = 1.0
    proximal_mu: float = 0.0


@dataclass(frozen=True)
class TrainingResult:
    """What one local training phase did.

    Attributes:
        steps: optimizer steps actually taken (must equal the planned steps under DP).
        mean_loss: mean training loss over the phase (a scalar; safe to report).
        history: the Opacus accountant history after training (empty without DP).

    """

    steps: int
    mean_loss: float
    history: list[tuple[float, float, int]]


def train_locally(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    settings: TrainingSettings,
    schedule: DPSchedule | None,
    seed: int,
    grades: np.ndarray | None = None,
) -> TrainingResult:
    """Train ``model`` in place on one bank's records.

    With ``grades`` (grade index per record, -1 unknown) and a model with a grade head,
    the PD loss and the grade loss (squared error on the 0-1 grade scale) are trained
    jointly; each record's *combined* gradient is clipped, so the DP guarantee covers
    both heads at once.

    With a ``schedule``, trains with DP-SGD: each step samples every record
    independently with probability ``schedule.sample_rate``, clips each record's
    gradient to ``settings.max_grad_norm`` and adds Gaussian noise of std
    ``schedule.noise_multiplier × max_grad_norm``; the result carries the accountant
    history of exactly these steps. Without a schedule, trains without privacy
    (shuffled mini-batches), for labelled non-private baselines only.

    Under DP, Poisson sampling and noise are seeded from the OS entropy pool, never
    from ``seed``: anyone who knows the run config could otherwise regenerate the
    noise and subtract it. (Opacus' ``secure_mode`` needs ``torchcsprng``, which has
    no build for current torch.) DP runs are therefore not bit-reproducible; ``seed``
    makes non-private training reproducible.
    """
    # Under DP every source of randomness is secret: sampling and noise.
    randomness_seed = secrets.randbits(63) if schedule is not None else seed
    torch.manual_seed(randomness_seed)
    targets = [torch.from_numpy(features), torch.from_numpy(labels)]
    if grades is not None:
        targets.append(torch.from_numpy(grade_targets(grades, model.spec.n_grades)))
    dataset = TensorDataset(*targets)
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(randomness_seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate,
                                momentum=settings.momentum)
    anchor = [p.detach().clone() for p in model.parameters()]
    model.train()
    engine = None
    with warnings.catch_warnings():
        # Opacus warns that its (torchcsprng) secure RNG is off, see above; torch warns
        # that backward hooks fire on inputs without gradients, which is expected.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        if schedule is not None:
            engine = PrivacyEngine(accountant="rdp")
            model, optimizer, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader,
                noise_multiplier=schedule.noise_multiplier,
                max_grad_norm=settings.max_grad_norm, poisson_sampling=True,
                noise_generator=torch.Generator().manual_seed(secrets.randbits(63)),
            )
        steps, total_loss = _run_epochs(model, optimizer, loader, settings, anchor)
    history = list(engine.accountant.history) if engine is not None else []
    return TrainingResult(steps=steps, mean_loss=total_loss / max(steps, 1), history=history)


def _run_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                settings: TrainingSettings, anchor: list[torch.Tensor]) -> tuple[int, float]:
    criterion = nn.BCEWithLogitsLoss()
    model.train()
    steps, total_loss = 0, 0.0
    for _ in range(settings.local_epochs):
        for batch in loader:
            optimizer.zero_grad()
            loss = _batch_loss(model, batch, criterion)
            loss.backward()
            if not isinstance(optimizer, DPOptimizer):
                # Non-private baselines clip the batch gradient to the same norm, for
                # stability at the DP learning rate (no privacy meaning).
                nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            if settings.proximal_mu > 0:
                _proximal_step(model, anchor, settings.learning_rate * settings.proximal_mu)
            steps += 1
            total_loss += float(loss.detach())
    return steps, total_loss


def _batch_loss(model: nn.Module, batch: list[torch.Tensor], criterion: nn.Module
                ) -> torch.Tensor:
    if len(batch) == 3:
        logits, scores = model(batch[0], with_grade=True)
        known = (batch[2] >= 0).float()
        grade_loss = (known * (scores - batch[2].clamp(min=0)) ** 2).mean()
    else:
        logits, grade_loss = model(batch[0]), 0.0
    if len(batch[1]) == 0:
        # An empty Poisson batch is still a DP step: the optimizer then adds pure noise.
        return logits.sum() + (scores.sum() if len(batch) == 3 else 0.0)
    return criterion(logits, batch[1]) + grade_loss


def grade_targets(grades: np.ndarray, n_grades: int) -> np.ndarray:
    """Grade indices mapped to the 0 (best) … 1 (worst) scale; unknown grades stay -1."""
    return np.where(grades >= 0, grades / (n_grades - 1), -1.0).astype(np.float32)


@torch.no_grad()
def _proximal_step(model: nn.Module, anchor: list[torch.Tensor], rate: float) -> None:
    """FedProx pull towards the global weights, as a decoupled step.

    The gradient of mu/2·||w - w_global||² does not depend on any record, so it is
    applied after the (noised) DP step: post-processing, no privacy cost. Added to
    the loss instead, Opacus would silently drop it (it rebuilds gradients from
    per-sample gradients of the data loss).
    """
    for parameter, global_value in zip(model.parameters(), anchor, strict=True):
        parameter -= rate * (parameter - global_value)


@torch.no_grad()
def predict_logits(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """Model logits for encoded rows (no gradient, eval mode)."""
    model.eval()
    return model(torch.from_numpy(features)).numpy().astype(np.float64)
