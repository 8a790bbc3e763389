"""DP-SGD of one bank on tensor batches: Poisson sampling, per-record clipping, Gaussian noise.

The same function trains the federated rounds, the personalization phase, the
local-only baselines, the centralized reference and the audit's reference models,
so every comparison is like for like and the audit checks the mechanism banks run.

One DP step, exactly Opacus' DP-SGD (Poisson ``DPDataLoader`` + ``DPOptimizer``):

1. **Poisson sampling**: every record joins the batch independently with probability
   ``q`` (:func:`poisson_batch`), from a generator seeded by the OS entropy pool;
2. **per-record clipping**: each record's gradient is scaled to L2 norm at most C
   and the clipped gradients are summed (:mod:`fedrisk.privacy.clipping`: one backward
   pass, no per-record gradient materialized);
3. **Gaussian noise**: ``N(0, σ²C²)`` on every coordinate of the sum, from the same
   secret generator, then division by the expected batch size ``q·n``;
4. an SGD (momentum) step, and the step is recorded in Opacus' RDP accountant, whose
   history ``(σ, q, steps)`` is what the bank charges.

Batches are index tensors into the bank's rows (no ``DataLoader``): that, and
clipping without a second backward pass, make DP-SGD cost about as much as plain
SGD on these small networks (``benchmarks/dp_throughput.py``).

One audit-only hook, :class:`GradientCanaries`, lets the privacy audit's shadow run
(``fedrisk.audit.canary_run``, never a bank's training) put crafted gradient canaries
through this very mechanism and watch each step's noisy sum on their coordinates.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from fedrisk.privacy.accounting import DPSchedule, steps_per_epoch
from fedrisk.privacy.clipping import ExtraRecords, LinearRecordGradients


@dataclass(frozen=True)
class TrainingSettings:
    """Optimizer settings of local training.

    Attributes:
        local_epochs: passes over the bank's train split per round (in expectation under
            Poisson sampling).
        batch_size: expected batch size; sets the sampling rate ``1 / ⌈n / batch_size⌉``.
        learning_rate / momentum: SGD settings.
        max_grad_norm: L2 bound each record's gradient is clipped to (DP sensitivity).
        proximal_mu: FedProx proximal term weight (0 = plain FedAvg local training).
        max_steps_per_epoch: DP-SGD takes at most this many steps per epoch (0: no cap):
            beyond ``batch_size × max_steps_per_epoch`` records the expected batch grows
            instead, so the noise on each averaged gradient (σ·C over the expected batch)
            shrinks as the bank grows. The sample rate is planned with the same cap.
            Non-private training ignores it.

    """

    local_epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 0.1
    momentum: float = 0.9
    max_grad_norm: float = 1.0
    proximal_mu: float = 0.0
    max_steps_per_epoch: int = 0


@dataclass(frozen=True)
class TrainingResult:
    """What one local training phase did.

    Attributes:
        steps: optimizer steps actually taken (must equal the planned steps under DP).
        mean_loss: mean loss per record over the phase (never leaves the bank: it is not
            a DP statistic).
        history: the Opacus accountant history after training (empty without DP).

    """

    steps: int
    mean_loss: float
    history: list[tuple[float, float, int]]


@dataclass(frozen=True)
class GradientCanaries:
    """Audit only: crafted records that DP-SGD treats as records, and a view of every step.

    The privacy audit's one-run canary test (``fedrisk.audit.canary_run``) passes this to
    :func:`train_locally` in a shadow run that is never released; no bank's training
    passes it, and without it nothing below runs. Each canary is a record whose
    gradient is zero everywhere but on ``layer`` (a ``nn.Linear`` that is part of the
    model but that no record's forward pass runs), where it is ``backprops[i] ⊗
    inputs[i]``, of norm far above the clipping bound C. Every DP-SGD step then:

    1. Poisson-samples the canaries with the records' rate ``q`` from the same secret
       generator (:func:`poisson_batch`);
    2. clips the sampled canaries with the batch's records, in the same
       :meth:`~fedrisk.privacy.clipping.LinearRecordGradients.clipped_sum` call, and
       adds the same Gaussian noise (:func:`add_noise`) to every coordinate;
    3. calls ``observe`` with ``layer``'s noisy clipped sum of that step (the sum, before
       it is averaged over the expected batch size).

    Without DP (non-private baselines) the canaries join each batch with probability
    ``batch / n`` from the run's seeded generator, are averaged with the batch's records,
    and ``observe`` sees ``layer``'s batch gradient times the batch size, after the
    batch-gradient clipping of that path.

    Attributes:
        layer: the canaries' own layer (its coordinates carry only canaries and noise).
        inputs: ``(k, layer.in_features)`` layer inputs, one row per canary.
        backprops: ``(k, layer.out_features)`` output gradients, one row per canary.
        observe: receives each step's ``(out_features, in_features)`` sum on ``layer``.

    """

    layer: nn.Linear
    inputs: torch.Tensor
    backprops: torch.Tensor
    observe: Callable[[torch.Tensor], None]

    def sampled(self, rate: float, rng: np.random.Generator) -> ExtraRecords:
        """The canaries in this step: each independently with probability ``rate``."""
        rows = poisson_batch(len(self.inputs), rate, rng) if len(self.inputs) else \
            torch.zeros(0, dtype=torch.long)
        return {self.layer: (self.inputs.index_select(0, rows),
                             self.backprops.index_select(0, rows))}


def train_locally(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    settings: TrainingSettings,
    schedule: DPSchedule | None,
    seed: int,
    grades: np.ndarray | None = None,
    canaries: GradientCanaries | None = None,
) -> TrainingResult:
    """Train ``model`` in place on one bank's records.

    With ``grades`` (grade index per record, -1 unknown) and a model with a grade head,
    the PD loss and the grade loss (squared error on the 0-1 grade scale) are trained
    jointly; each record's *combined* gradient is clipped, so the DP guarantee covers
    both heads at once.

    With a ``schedule``, trains with DP-SGD: ``local_epochs × ⌈n / batch_size⌉`` steps
    (at most ``max_steps_per_epoch`` per epoch), each on a Poisson sample at rate
    ``schedule.sample_rate`` (which must be one over the steps per epoch, as planned),
    each record's gradient clipped to ``settings.max_grad_norm``, Gaussian noise of std
    ``schedule.noise_multiplier × max_grad_norm``; the result carries the accountant
    history of exactly these steps.
    Without a schedule, trains without privacy (shuffled mini-batches, the batch
    gradient clipped for stability), for labelled non-private baselines only.

    Under DP, Poisson sampling and noise come from a generator seeded by the OS entropy
    pool, never from ``seed``: anyone who knows the run config could otherwise recompute
    the batches and subtract the noise. DP runs are therefore not bit-reproducible;
    ``seed`` makes non-private training reproducible.

    ``canaries`` is the privacy audit's hook (:class:`GradientCanaries`): only its shadow
    run passes it.
    """
    rows = TrainingRows(model, features, labels, grades)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate,
                                momentum=settings.momentum)
    anchor = [p.detach().clone() for p in model.parameters()]
    model.train()
    with _one_thread():
        if schedule is None:
            return _train_plain(model, rows, optimizer, settings, anchor, seed, canaries)
        return _train_private(model, rows, optimizer, settings, anchor, schedule, canaries)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: these networks' operations are too small to split.

    Each step is a few dozen tiny operations, so per-operation overhead dominates and
    more threads only add synchronization; on a machine running several banks (or a
    bank beside other work) idle-spinning threads slowed steps by 10-30×.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TrainingRows:
    """A bank's training rows as tensors, and the loss of each record of a batch.

    ``targets`` holds per record the default label and, with a grade head, the grade
    target on the 0 (best) … 1 (worst) scale and whether the grade is known, so that a
    batch is two row gathers.
    """

    def __init__(self, model: nn.Module, features: np.ndarray, labels: np.ndarray,
                 grades: np.ndarray | None) -> None:
        self.model = model
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        columns = [np.asarray(labels, dtype=np.float32)]
        if grades is not None:
            scale = grade_targets(grades, model.spec.n_grades)
            columns += [np.maximum(scale, 0.0), (scale >= 0).astype(np.float32)]
        self.targets = torch.from_numpy(np.stack(columns, axis=1))
        self.with_grade = grades is not None

    def __len__(self) -> int:
        return len(self.targets)

    def record_losses(self, rows: torch.Tensor) -> torch.Tensor:
        """One loss per selected record: BCE of the PD head, plus the grade head's error."""
        features = self.features.index_select(0, rows)
        targets = self.targets.index_select(0, rows)
        if not self.with_grade:
            return nn.functional.binary_cross_entropy_with_logits(
                self.model(features), targets[:, 0], reduction="none")
        logits, scores = self.model(features, with_grade=True)
        # Squared error on the grade scale; records of unknown grade (weight 0) add nothing.
        grade_error = targets[:, 2] * (scores - targets[:, 1]).square()
        return nn.functional.binary_cross_entropy_with_logits(
            logits, targets[:, 0], reduction="none") + grade_error


def _train_private(model: nn.Module, rows: TrainingRows, optimizer: torch.optim.Optimizer,
                   settings: TrainingSettings, anchor: list[torch.Tensor],
                   schedule: DPSchedule, canaries: GradientCanaries | None = None
                   ) -> TrainingResult:
    n = len(rows)
    per_epoch = steps_per_epoch(n, settings.batch_size, settings.max_steps_per_epoch)
    rate = schedule.sample_rate
    if not math.isclose(rate, 1 / per_epoch, rel_tol=1e-12):
        raise ValueError(f"schedule's sample rate {rate:g} is not 1/{per_epoch}, the rate of "
                         f"batch size {settings.batch_size} over {n} records")
    rng = secret_generator()
    accountant = RDPAccountant()
    noise_std = schedule.noise_multiplier * settings.max_grad_norm
    steps, loss_sum, seen = 0, torch.zeros(()), 0
    with LinearRecordGradients(model) as per_record:
        for _ in range(settings.local_epochs * per_epoch):
            batch = poisson_batch(n, rate, rng)
            losses = rows.record_losses(batch)
            extra = None if canaries is None else canaries.sampled(rate, rng)
            per_record.clipped_sum(losses, settings.max_grad_norm, extra)
            add_noise(per_record.flat_grad, noise_std, n * rate, rng)
            if canaries is not None:
                canaries.observe(canaries.layer.weight.grad * (n * rate))
            optimizer.step()
            accountant.step(noise_multiplier=schedule.noise_multiplier, sample_rate=rate)
            _proximal_step(model, anchor, settings)
            steps, loss_sum, seen = steps + 1, loss_sum + losses.detach().sum(), seen + len(batch)
    return TrainingResult(steps, float(loss_sum) / max(seen, 1), list(accountant.history))


def _train_plain(model: nn.Module, rows: TrainingRows, optimizer: torch.optim.Optimizer,
                 settings: TrainingSettings, anchor: list[torch.Tensor],
                 seed: int, canaries: GradientCanaries | None = None) -> TrainingResult:
    generator = torch.Generator().manual_seed(seed)
    canary_rng = None if canaries is None else np.random.default_rng(seed)
    steps, loss_sum = 0, torch.zeros(())
    for _ in range(settings.local_epochs):
        for batch in torch.randperm(len(rows), generator=generator).split(settings.batch_size):
            optimizer.zero_grad()
            loss = rows.record_losses(batch).mean()
            loss.backward()
            if canaries is not None and canary_rng is not None:
                _add_plain_canaries(canaries, len(batch), len(rows), canary_rng)
            # Non-private baselines clip the batch gradient to the same norm, for
            # stability at the DP learning rate (no privacy meaning).
            nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            if canaries is not None:
                canaries.observe(canaries.layer.weight.grad * len(batch))
            optimizer.step()
            _proximal_step(model, anchor, settings)
            steps, loss_sum = steps + 1, loss_sum + loss.detach()
    return TrainingResult(steps, float(loss_sum) / max(steps, 1), [])


def _add_plain_canaries(canaries: GradientCanaries, batch_size: int, n: int,
                        rng: np.random.Generator) -> None:
    """Non-private path: the canaries in this batch, averaged like its records' gradients."""
    inputs, backprops = canaries.sampled(min(batch_size / n, 1.0), rng)[canaries.layer]
    canaries.layer.weight.grad = backprops.t().mm(inputs) / batch_size


def secret_generator() -> np.random.Generator:
    """A generator seeded with 128 bits from the OS entropy pool (DP sampling and noise)."""
    return np.random.default_rng(secrets.randbits(128))


def poisson_batch(n: int, sample_rate: float, rng: np.random.Generator) -> torch.Tensor:
    """Indices of a Poisson sample: each of ``n`` records is in it independently w.p. ``q``.

    This is the Bernoulli mask ``u < q`` over all ``n`` records, drawn by its gaps: the
    gaps between successive selected records of independent Bernoulli(q) trials are
    independent Geometric(q) variables, so cumulative sums of geometric draws give
    exactly the selected indices, at O(batch) instead of O(n) random numbers per step.
    """
    if sample_rate >= 1:
        return torch.arange(n)
    expected = n * sample_rate
    return torch.from_numpy(bernoulli_positions(n, sample_rate, rng,
                                                int(expected + 4 * math.sqrt(expected) + 16)))


def bernoulli_positions(n: int, sample_rate: float, rng: np.random.Generator,
                        chunk: int) -> np.ndarray:
    """Sorted positions below ``n`` of the successes of Bernoulli trials, ``chunk`` gaps at a time.

    Draws geometric gaps until the last success passes ``n - 1``, so no position below
    ``n`` is left undecided whatever ``chunk`` is (it only sets how many are drawn at once).
    """
    parts, last = [], -1
    while last < n - 1:
        positions = last + np.cumsum(rng.geometric(sample_rate, size=chunk))
        parts.append(positions)
        last = int(positions[-1])
    positions = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return positions[:np.searchsorted(positions, n)]


def add_noise(flat_grad: torch.Tensor, std: float, expected_batch_size: float,
              rng: np.random.Generator) -> None:
    """Add ``N(0, std²)`` to every coordinate of the clipped sum, then average over ``q·n``.

    ``std`` is ``σ·C``; dividing by the *expected* batch size (not the sampled one, which
    depends on the data) is Opacus' ``DPOptimizer.scale_grad`` for Poisson batches.
    """
    noise = torch.from_numpy(rng.standard_normal(flat_grad.numel(), dtype=np.float32))
    flat_grad.add_(noise, alpha=std).div_(expected_batch_size)


def grade_targets(grades: np.ndarray, n_grades: int) -> np.ndarray:
    """Grade indices mapped to the 0 (best) … 1 (worst) scale; unknown grades stay -1."""
    return np.where(grades >= 0, grades / (n_grades - 1), -1.0).astype(np.float32)


@torch.no_grad()
def _proximal_step(model: nn.Module, anchor: list[torch.Tensor],
                   settings: TrainingSettings) -> None:
    """FedProx pull towards the global weights, as a decoupled step.

    The gradient of mu/2·||w - w_global||² does not depend on any record, so it is
    applied after the (noised) DP step: post-processing, no privacy cost. Added to
    the loss instead, per-record clipping would clip it together with the data's
    gradient.
    """
    if settings.proximal_mu <= 0:
        return
    rate = settings.learning_rate * settings.proximal_mu
    for parameter, global_value in zip(model.parameters(), anchor, strict=True):
        parameter -= rate * (parameter - global_value)


@torch.no_grad()
def predict_logits(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """Model logits for encoded rows (no gradient, eval mode)."""
    model.eval()
    return model(torch.from_numpy(features)).numpy().astype(np.float64)
