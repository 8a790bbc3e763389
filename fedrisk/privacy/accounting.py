"""Record-level DP accounting for a bank, composed over every step it ever took.

The unit of privacy is one customer record of one bank. Two datasets are
neighbours when they differ by adding or removing one record (Poisson sampling,
which is what Opacus' accountants assume). A bank's history is the list of
``(noise_multiplier, sample_rate, steps)`` triples of every DP-SGD phase it ran
on the same data; ε is always computed over the whole history, never per round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from scipy.optimize import brentq

from fedrisk.errors import UserError

History = list[tuple[float, float, int]]
ACCOUNTANTS = ("rdp", "prv", "gdp")
# One accountant name, or several: ε is then the largest over them (the strictest).
Accountants = str | Sequence[str]


class PrivacyBudgetExceeded(UserError, RuntimeError):
    """A bank refused to train because the next round would exceed its ε budget."""


@dataclass(frozen=True)
class DPSchedule:
    """The DP-SGD plan of one bank for one run.

    Attributes:
        sample_rate: Poisson sampling probability of each record per step
            (expected batch size / number of training records).
        steps_per_round: optimizer steps per round (local epochs × 1/sample_rate).
        noise_multiplier: std of the Gaussian noise divided by ``max_grad_norm``;
            chosen so the planned rounds (and personalization) meet the target ε at δ.
        personalization_steps: steps of the bank-local fine-tuning after federation,
            charged to the same budget (0 when personalization is off).

    """

    sample_rate: float
    steps_per_round: int
    noise_multiplier: float
    personalization_steps: int = 0


def steps_per_epoch(n_records: int, batch_size: int, max_steps_per_epoch: int = 0) -> int:
    """Steps of one Poisson-sampled epoch, as Opacus' ``DPDataLoader`` runs them.

    ``⌈n / batch_size⌉``, at most ``max_steps_per_epoch`` (0: no cap). The sample rate is
    one over this, so a bank above ``batch_size × max_steps_per_epoch`` records samples
    larger expected batches (``n / max_steps_per_epoch``) instead of taking more steps.
    """
    steps = max(1, math.ceil(n_records / batch_size))
    return min(steps, max_steps_per_epoch) if max_steps_per_epoch > 0 else steps


def compose_epsilon(history: Sequence[tuple[float, float, int]], delta: float,
                    accountant: Accountants = "rdp") -> float:
    """Return ε at ``delta`` of the composition of every step in ``history``.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` triples, in any order. A
            Gaussian mechanism released once without sampling (an evaluation histogram,
            a noisy count) is ``(noise_multiplier, 1.0, 1)``.
        delta: the δ at which ε is reported; must be below 1/n of the bank to be meaningful.
        accountant: Opacus accountant: ``"rdp"`` (an upper bound, the default),
            ``"prv"`` (tighter numerically) or ``"gdp"`` (asymptotic, can underestimate);
            or several, in which case ε is the largest of them.

    Entries with the same ``(noise_multiplier, sample_rate)`` are one mechanism run
    ``steps`` times, so they are merged (as Opacus' accountants merge consecutive
    steps): the cost grows with the distinct mechanisms, not with rounds or runs. RDP
    sums each mechanism's RDP curve, computed once per ``(σ, q)`` with Opacus' analysis.

    """
    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return math.inf
    names = (accountant,) if isinstance(accountant, str) else tuple(accountant)
    merged = merge_history(history)
    return max(_epsilon(merged, float(delta), name) for name in names)


def weighted_mean_noise_multiplier(noise_multiplier: float, cohort: int,
                                   sizes: Sequence[float]) -> float:
    """Noise multiplier of the institution-level Gaussian mechanism on a weighted mean.

    Flower's client-side fixed-clipping DP adds noise of std ``noise_multiplier × C /
    cohort`` to the aggregate, which FedAvg (and SecAgg+) weigh by each bank's published
    size: ``Σ wᵢ clip(uᵢ)`` with ``wᵢ = nᵢ / Σ n``. Replacing one bank's clipped update by
    zero moves it by at most ``max wᵢ × C``, so relative to that sensitivity the noise
    multiplier is ``noise_multiplier / (cohort × max wᵢ)``: ``noise_multiplier`` itself
    when the banks weigh alike, less when one bank is larger than the rest.
    """
    total = float(sum(sizes))
    if total <= 0:
        return noise_multiplier
    return noise_multiplier / (cohort * max(sizes) / total)


def merge_history(history: Sequence[tuple[float, float, int]]
                  ) -> tuple[tuple[float, float, int], ...]:
    """``history`` with the steps of each ``(σ, q)`` added up, in a canonical order."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, rate, count in history:
        key = (float(sigma), float(rate))
        steps[key] = steps.get(key, 0) + int(count)
    return tuple((sigma, rate, count) for (sigma, rate), count in sorted(steps.items()))


@lru_cache(maxsize=4096)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    if accountant == "rdp":
        curve = sum(count * _rdp_curve(sigma, rate) for sigma, rate, count in history)
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS,
                                                    rdp=curve, delta=delta)
        return float(epsilon)
    tracker = create_accountant(accountant)
    tracker.history = list(history)
    return float(tracker.get_epsilon(delta))


@lru_cache(maxsize=8192)
def _rdp_curve(sigma: float, rate: float) -> np.ndarray:
    """RDP of one step of the subsampled Gaussian at Opacus' default orders (read-only)."""
    curve = rdp_analysis.compute_rdp(q=rate, noise_multiplier=sigma, steps=1,
                                     orders=RDPAccountant.DEFAULT_ALPHAS)
    curve.setflags(write=False)
    return curve


def calibrate_noise_multiplier(
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    prior_history: Sequence[tuple[float, float, int]] = (),
    accountant: Accountants = "rdp",
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier whose planned steps, after ``prior_history``, meet the target.

    Returns σ such that ε(prior + ``steps`` steps at σ and ``sample_rate``) ≤ ``target_epsilon``
    and is within ``tolerance`` of it. Raises :class:`PrivacyBudgetExceeded` when the
    prior history alone already spends the budget.

    The bisection runs once per process for the same inputs (prior history merged as in
    :func:`compose_epsilon`): every bank re-plans each round and each evaluation, and
    gets its σ from the cache after the first time.
    """
    names = (accountant,) if isinstance(accountant, str) else tuple(accountant)
    return _calibrate(float(target_epsilon), float(target_delta), float(sample_rate),
                      int(steps), merge_history(prior_history), names, float(tolerance))


@lru_cache(maxsize=1024)
def _calibrate(target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
               prior_history: tuple[tuple[float, float, int], ...], accountant: tuple[str, ...],
               tolerance: float) -> float:
    spent = compose_epsilon(prior_history, target_delta, accountant)
    if spent >= target_epsilon:
        raise PrivacyBudgetExceeded(
            f"ε already spent on this data is {spent:.3f} ≥ target ε {target_epsilon:g}"
        )

    def epsilon_at(sigma: float) -> float:
        return compose_epsilon([*prior_history, (sigma, sample_rate, steps)], target_delta,
                               accountant)

    low, high = _bracket(epsilon_at, target_epsilon)
    if epsilon_at(high) >= target_epsilon - tolerance:
        return high
    # ε falls smoothly with σ: Brent's method reaches the tolerance in about half the
    # evaluations of a bisection (each is a fresh RDP curve, the cost of planning).
    sigma = brentq(lambda s: epsilon_at(s) - (target_epsilon - tolerance / 2), low, high,
                   xtol=1e-4)
    while epsilon_at(sigma) > target_epsilon:  # the root is within xtol: step to its safe side
        sigma += 1e-4
    return sigma


def _bracket(epsilon_at: Callable[[float], float], target_epsilon: float
             ) -> tuple[float, float]:
    """σ values ``low < high`` with ε(low) > target ≥ ε(high), by doubling or halving from 1."""
    high = 1.0
    while epsilon_at(high) > target_epsilon:
        high *= 2
        if high > 1e4:
            raise PrivacyBudgetExceeded("no noise multiplier below 1e4 meets the target ε")
    low = high / 2
    while epsilon_at(low) <= target_epsilon:
        low, high = low / 2, low
    return low, high


def plan_schedule(
    n_records: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    target_epsilon: float,
    target_delta: float,
    prior_history: Sequence[tuple[float, float, int]] = (),
    accountant: Accountants = "rdp",
    personalization_epochs: int = 0,
    max_steps_per_epoch: int = 0,
) -> DPSchedule:
    """Plan a bank's DP-SGD for a run: all ``rounds`` plus personalization meet the target ε.

    Steps per epoch and the sample rate follow :func:`steps_per_epoch`.
    """
    per_epoch = steps_per_epoch(n_records, batch_size, max_steps_per_epoch)
    sample_rate = 1.0 / per_epoch
    steps_per_round = local_epochs * per_epoch
    personalization_steps = personalization_epochs * per_epoch
    sigma = calibrate_noise_multiplier(
        target_epsilon, target_delta, sample_rate,
        rounds * steps_per_round + personalization_steps, prior_history, accountant,
    )
    return DPSchedule(sample_rate, steps_per_round, sigma, personalization_steps)


def check_budget(history: History, schedule: DPSchedule, target_epsilon: float,
                 target_delta: float, accountant: Accountants = "rdp",
                 steps: int | None = None) -> float:
    """Return ε after ``steps`` more steps (default: one round); raise if over ``target_epsilon``.

    Called before every round, so a bank refuses to train instead of overspending.
    """
    steps = schedule.steps_per_round if steps is None else steps
    planned = [*history, (schedule.noise_multiplier, schedule.sample_rate, steps)]
    epsilon_after = compose_epsilon(planned, target_delta, accountant)
    if epsilon_after > target_epsilon * (1 + 1e-9):
        spent = compose_epsilon(history, target_delta, accountant)
        raise PrivacyBudgetExceeded(
            f"privacy budget exhausted: ε spent {spent:.3f}, one more round would reach "
            f"{epsilon_after:.3f} > target ε {target_epsilon:g} at δ={target_delta:g}"
        )
    return epsilon_after


def capped_noise(replanned: float, planned: float, max_factor: float) -> float:
    """``replanned`` σ, unless it exceeds ``max_factor`` × the run's ``planned`` σ.

    A bank re-plans σ when its ledger shows more of a run spent than planned; past this
    bound (the bank policy's ``max-replanned-noise``) what is left cannot pay a useful
    round, and the bank refuses with :class:`PrivacyBudgetExceeded`.
    """
    if replanned > max_factor * planned:
        raise PrivacyBudgetExceeded(
            f"privacy budget exhausted: what is left of the run's budget needs σ "
            f"{replanned:.3g}, above max-replanned-noise {max_factor:g} × the planned σ "
            f"{planned:.3g}")
    return replanned
