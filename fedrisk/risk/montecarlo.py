"""Portfolio credit losses under the one-factor Gaussian copula (Vasicek), by exact Monte Carlo.

Loan ``i`` defaults in scenario ``s`` iff ``sqrt(rho_i) Z_s + sqrt(1 - rho_i) eps_is <
Phi^-1(PD_i)`` with ``Z_s`` and ``eps_is`` independent standard normals. Given the
systematic factor ``Z``, defaults are independent Bernoulli draws with probability
``p_i(Z) = Phi((Phi^-1(PD_i) - sqrt(rho_i) Z) / sqrt(1 - rho_i))``.

Drawing every (scenario, loan) pair costs ``S x N`` random numbers (1e10 for a million
scenarios of 10,000 loans). Instead the factor values are sorted and cut into blocks
over which each ``p_i(Z)`` barely moves, between ``p_low`` (at the block's highest
factor) and ``p_high`` (at its lowest). In a block, each loan's *candidate* defaults
form a Bernoulli process at ``p_high`` over the block's scenarios, drawn by geometric
gaps: one random number per candidate, not per pair. Each candidate must then be
kept with probability ``p_i(Z_s) / p_high``, i.e. rejected with probability at most
``1 - p_low / p_high``, which is small. So the rejections are drawn sparsely too: a
Bernoulli process at that bound over each loan's candidates picks the few that may
be rejected, and only those get the exact ``p_i(Z_s)`` and a uniform draw. The
result is exact (every pair defaults independently with ``p_i(Z_s)``), costs about
one draw per default, and working memory is bounded by ``candidates_per_block``.

Every block draws from its own stream (``SeedSequence(seed, spawn_key=(1, first
scenario))``), so results depend only on the inputs, the seed and
``candidates_per_block``, never on the number of worker threads.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtr, ndtri

from fedrisk.data import DataError

BASEL_RETAIL_CORRELATION = (0.03, 0.16, 35.0)
"""Basel II "other retail" asset correlation: lowest, highest and the PD decay factor."""

_FACTOR_STREAM = 0
T = TypeVar("T")
_BLOCK_STREAM = 1


def basel_retail_correlation(pd: ArrayLike) -> np.ndarray:
    """Basel II "other retail" asset correlation of each probability of default.

    ``rho(PD) = 0.03 w + 0.16 (1 - w)`` with ``w = (1 - exp(-35 PD)) / (1 - exp(-35))``:
    0.16 for the safest loans, falling towards 0.03 as PD grows.
    """
    low, high, decay = BASEL_RETAIL_CORRELATION
    weight = -np.expm1(-decay * np.asarray(pd, dtype=float)) / -math.expm1(-decay)
    return low * weight + high * (1.0 - weight)


def conditional_default_probability(
    pd: ArrayLike, correlation: ArrayLike, factor: ArrayLike
) -> np.ndarray:
    """Probability of default given the systematic factor ``Z`` (Vasicek)."""
    rho = np.asarray(correlation, dtype=float)
    return ndtr((ndtri(np.asarray(pd, dtype=float)) - np.sqrt(rho) * factor) / np.sqrt(1 - rho))


def vasicek_loss_quantile(pd: float, correlation: float, level: float) -> float:
    """Closed-form ``level`` quantile of the loss fraction of an infinitely granular book.

    All loans share ``pd`` and ``correlation``; the loss fraction is
    ``Phi((Phi^-1(PD) + sqrt(rho) Phi^-1(level)) / sqrt(1 - rho))`` (LGD 1).
    """
    return float(conditional_default_probability(pd, correlation, -ndtri(level)))


@dataclass(frozen=True)
class LossSimulation:
    """Simulated portfolio losses and each loan's share of the tail.

    Attributes:
        losses: loss of each scenario, scenarios ordered by ascending systematic factor.
        factor: the systematic factor ``Z`` of each scenario (ascending).
        contribution_level: confidence level whose expected shortfall is allocated.
        contributions: per loan, its mean loss over the tail scenarios of
            ``contribution_level`` (Euler allocation: they sum to that expected shortfall).
        candidate_defaults: candidates drawn before thinning (a cost measure).

    """

    losses: np.ndarray
    factor: np.ndarray
    contribution_level: float
    contributions: np.ndarray
    candidate_defaults: int

    @property
    def expected_loss(self) -> float:
        """Mean loss over scenarios."""
        return float(self.losses.mean())

    def value_at_risk(self, level: float) -> float:
        """Least loss among the worst ``ceil((1 - level) * scenarios)`` scenarios."""
        return float(self.losses[tail_scenarios(self.losses, level)].min())

    def expected_shortfall(self, level: float) -> float:
        """Mean loss over the worst ``ceil((1 - level) * scenarios)`` scenarios."""
        return float(self.losses[tail_scenarios(self.losses, level)].mean())


def tail_size(level: float, scenarios: int) -> int:
    """Number of worst scenarios that make up the tail beyond ``level`` (at least one)."""
    if not 0 < level < 1:
        raise DataError(f"confidence level must be between 0 and 1, got {level}")
    return max(1, math.ceil(round((1 - level) * scenarios, 9)))


def tail_scenarios(losses: np.ndarray, level: float) -> np.ndarray:
    """Indices of the worst ``tail_size(level)`` scenarios (ties broken deterministically)."""
    n_tail = tail_size(level, losses.size)
    return np.argpartition(losses, losses.size - n_tail)[losses.size - n_tail:]


def simulate_losses(
    pd: ArrayLike,
    loss_if_default: ArrayLike,
    correlation: ArrayLike,
    *,
    scenarios: int,
    seed: int = 0,
    contribution_level: float = 0.99,
    workers: int = 1,
    candidates_per_block: int = 1_000_000,
) -> LossSimulation:
    """Simulate the loss distribution of a loan book under the one-factor Gaussian copula.

    Args:
        pd: probability of default of each loan, in [0, 1].
        loss_if_default: loss of each loan if it defaults (exposure x LGD), >= 0.
        correlation: asset correlation, one value or one per loan, in [0, 1).
        scenarios: number of simulated scenarios of the systematic factor.
        seed: seed of every random draw; the same inputs and seed give the same losses.
        contribution_level: level whose expected shortfall is allocated to loans.
        workers: threads simulating blocks in parallel (results do not depend on it).
        candidates_per_block: expected candidate defaults per block; bounds working
            memory (about 50 bytes per candidate and worker) and fixes the block layout,
            so results depend on it.

    Raises:
        DataError: inputs outside their ranges or of mismatched lengths.

    """
    book = _Book.build(pd, loss_if_default, correlation)
    if scenarios < 1 or workers < 1 or candidates_per_block < 1:
        raise DataError("scenarios, workers and candidates_per_block must be at least 1")
    tail_size(contribution_level, scenarios)  # validates the level before the long part
    factor = np.sort(_stream(seed, _FACTOR_STREAM).standard_normal(scenarios))
    blocks = _plan_blocks(book, factor, candidates_per_block)

    def block_losses(number: int) -> tuple[np.ndarray, int]:
        draws = _draw_block(book, factor, blocks[number], seed)
        return draws.losses(book.loss), draws.drawn

    losses = np.full(scenarios, book.certain_losses.sum())
    candidates = 0
    for (start, stop), (block, drawn) in zip(
        blocks, _in_order(block_losses, range(len(blocks)), workers), strict=True
    ):
        losses[start:stop] += block
        candidates += drawn
    contributions = _tail_contributions(book, factor, blocks, losses, contribution_level, seed,
                                        workers)
    return LossSimulation(losses, factor, contribution_level, contributions, candidates)


@dataclass(frozen=True)
class _Book:
    """Loans whose default is uncertain, in the copula's terms, plus loans sure to default."""

    n_loans: int
    index: np.ndarray  # position of each uncertain loan in the caller's arrays
    threshold: np.ndarray  # Phi^-1(PD)
    loading: np.ndarray  # sqrt(rho)
    spread: np.ndarray  # sqrt(1 - rho)
    loss: np.ndarray
    certain: np.ndarray  # positions of loans with PD 1
    certain_losses: np.ndarray

    @classmethod
    def build(cls, pd: ArrayLike, loss: ArrayLike, correlation: ArrayLike) -> _Book:
        pd, loss = np.asarray(pd, dtype=float), np.asarray(loss, dtype=float)
        if pd.ndim != 1 or loss.shape != pd.shape:
            raise DataError("pd and loss_if_default must be 1-D arrays of the same length")
        rho = np.broadcast_to(np.asarray(correlation, dtype=float), pd.shape)
        _check_book(pd, loss, rho)
        uncertain = np.flatnonzero((pd > 0) & (pd < 1))
        certain = np.flatnonzero(pd >= 1)
        return cls(pd.size, uncertain, ndtri(pd[uncertain]), np.sqrt(rho[uncertain]),
                   np.sqrt(1 - rho[uncertain]), loss[uncertain], certain, loss[certain])

    def default_probability(self, factor: float | np.ndarray) -> np.ndarray:
        """``p_i(Z)`` of every uncertain loan at one factor value."""
        return ndtr((self.threshold - self.loading * factor) / self.spread)


def _check_book(pd: np.ndarray, loss: np.ndarray, rho: np.ndarray) -> None:
    if not (np.all(np.isfinite(pd)) and np.all((pd >= 0) & (pd <= 1))):
        raise DataError("probabilities of default must be between 0 and 1")
    if not (np.all(np.isfinite(loss)) and np.all(loss >= 0)):
        raise DataError("losses if default must be finite and non-negative")
    if not (np.all(np.isfinite(rho)) and np.all((rho >= 0) & (rho < 1))):
        raise DataError("asset correlation must be at least 0 and below 1")


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _plan_blocks(book: _Book, factor: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Cut sorted scenarios into blocks of about ``budget`` expected candidates each."""
    blocks, start = [], 0
    while start < factor.size:
        per_scenario = float(book.default_probability(factor[start]).sum())
        size = factor.size - start if per_scenario == 0 else int(budget // per_scenario)
        stop = min(factor.size, start + max(1, size))
        blocks.append((start, stop))
        start = stop
    return blocks


def _in_order(function: Callable[[int], T], numbers: Iterable[int], workers: int
              ) -> Iterator[T]:
    """``map(function, numbers)`` on ``workers`` threads, at most ``workers + 1`` results alive."""
    if workers == 1:
        yield from map(function, numbers)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for number in numbers:
            pending.append(pool.submit(function, number))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


Run = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One round of a Bernoulli process: loans, positions drawn per loan, positions (1-based)."""


@dataclass(frozen=True)
class _BlockDraws:
    """The defaults of one block: candidate rounds minus rejected (loan, offset) pairs."""

    size: int
    candidates: list[Run]  # positions past the block are clamped to size + 1
    reject_loans: np.ndarray
    reject_offsets: np.ndarray
    drawn: int

    def losses(self, loss: np.ndarray) -> np.ndarray:
        """Loss of each scenario of the block (clamped positions land in a dropped bin)."""
        total = np.zeros(self.size)
        total -= np.bincount(self.reject_offsets, weights=loss[self.reject_loans],
                             minlength=self.size)
        for rows, draws, positions in self.candidates:
            weights = np.repeat(loss[rows], draws)
            total += np.bincount(positions.astype(np.intp), weights=weights,
                                 minlength=self.size + 2)[1:self.size + 1]
        return total

    def defaults_in(self, scenarios: np.ndarray, n_loans: int) -> np.ndarray:
        """Defaults of each loan over the block scenarios flagged in ``scenarios``."""
        rejected = self.reject_loans[scenarios[self.reject_offsets]]
        counts = -np.bincount(rejected, minlength=n_loans)
        for rows, draws, positions in self.candidates:
            inside = positions <= self.size
            loans = np.repeat(rows, draws)[inside]
            flagged = scenarios[positions[inside].astype(np.intp) - 1]
            counts += np.bincount(loans[flagged], minlength=n_loans)
        return counts


def _draw_block(book: _Book, factor: np.ndarray, block: tuple[int, int], seed: int
                ) -> _BlockDraws:
    """Draw the defaults of one block of ascending factor values from its own stream."""
    z = factor[block[0]:block[1]]
    rng = _stream(seed, _BLOCK_STREAM, block[0])
    p_high, p_low = book.default_probability(z[0]), book.default_probability(z[-1])
    reject_bound = 1.0 - np.divide(p_low, p_high, out=np.ones_like(p_high), where=p_high > 0)
    candidates = _bernoulli_runs(p_high, np.full(p_high.size, z.size), rng)
    loans, offsets = [], []
    for rows, draws, positions in candidates:
        loan, offset = _rejections(book, z, rows, draws, positions, p_high, reject_bound, rng)
        np.minimum(positions, z.size + 1.0, out=positions)
        loans.append(loan)
        offsets.append(offset)
    drawn = sum(int(draws.sum()) for _, draws, _ in candidates)
    empty = np.zeros(0, dtype=np.intp)
    return _BlockDraws(z.size, candidates, np.concatenate([empty, *loans]),
                       np.concatenate([empty, *offsets]), drawn)


def _rejections(book: _Book, z: np.ndarray, rows: np.ndarray, draws: np.ndarray,
                positions: np.ndarray, p_high: np.ndarray, reject_bound: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of one round that are rejected: (loan, scenario offset) pairs.

    Each candidate may be rejected with probability ``reject_bound`` of its loan
    (drawn as a sparse Bernoulli process over the loan's candidates), then is rejected
    with probability ``(1 - p_i(Z_s) / p_high) / reject_bound``: overall exactly
    ``1 - p_i(Z_s) / p_high``.
    """
    firsts = np.cumsum(draws) - draws
    loans, offsets = [], []
    for segments, picks, picked in _bernoulli_runs(reject_bound[rows], draws, rng):
        segment = np.repeat(segments, picks)
        inside = picked <= draws[segment]
        segment = segment[inside]
        scenario = positions[firsts[segment] + picked[inside].astype(np.intp) - 1]
        real = scenario <= z.size
        loan, offset = rows[segment[real]], scenario[real].astype(np.intp) - 1
        exact = ndtr((book.threshold[loan] - book.loading[loan] * z[offset]) / book.spread[loan])
        reject = rng.random(loan.size) * reject_bound[loan] * p_high[loan] < p_high[loan] - exact
        loans.append(loan[reject])
        offsets.append(offset[reject])
    empty = np.zeros(0, dtype=np.intp)
    return np.concatenate([empty, *loans]), np.concatenate([empty, *offsets])


def _bernoulli_runs(probability: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
                    ) -> list[Run]:
    """Cells of a grid with one row per loan, chosen independently with the row's probability.

    Row ``i`` has ``lengths[i]`` cells. Positions (1-based) are cumulative geometric
    gaps, drawn as ``floor(E / -log(1 - q)) + 1`` with ``E`` standard exponential. Each
    round draws a little more than the expected count per row; rows whose last position
    is still inside get another round starting from there (geometric gaps are
    memoryless, so this stays exact).

    Returns:
        Per round, ``(rows, draws, positions)``: the rows of the round, how many
        positions each drew, and the positions, ascending within each row; positions
        past a row's end belong to no cell.

    """
    rows = np.flatnonzero(probability > 0)
    chance, length = probability[rows], lengths[rows].astype(float)
    gap_cap = float(length.max()) + 1.0 if rows.size else 1.0
    with np.errstate(divide="ignore"):
        gap_scale = np.where(chance >= 1, 0.0, -1.0 / np.log1p(-np.minimum(chance, 1.0)))
    start = np.zeros(rows.size)
    runs: list[Run] = []
    while rows.size:
        expected = (length - start) * chance
        draws = np.ceil(expected + np.sqrt(expected) + 1).astype(np.intp)
        positions, ends = _positions(rng, gap_scale, start, draws, gap_cap)
        runs.append((rows, draws, positions))
        last = positions[ends - 1]
        unfinished = last <= length
        start, length = last[unfinished], length[unfinished]
        rows, chance, gap_scale = rows[unfinished], chance[unfinished], gap_scale[unfinished]
    return runs


def _positions(
    rng: np.random.Generator, gap_scale: np.ndarray, start: np.ndarray, draws: np.ndarray,
    gap_cap: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative geometric gaps for each row's run, starting after ``start``.

    Gaps are capped at ``gap_cap`` (longer than any row, so a capped gap leaves the
    grid anyway), which keeps running sums exact in float64. Returns positions and
    each run's end index.
    """
    gaps = rng.standard_exponential(int(draws.sum()))
    gaps *= np.repeat(gap_scale, draws)
    np.floor(gaps, out=gaps)
    gaps += 1.0
    np.minimum(gaps, gap_cap, out=gaps)
    ends = np.cumsum(draws)
    firsts = ends - draws
    run_totals = np.add.reduceat(gaps, firsts)
    # A segmented cumulative sum: each run restarts from its own start position.
    restart = start.copy()
    restart[1:] -= start[:-1] + run_totals[:-1]
    gaps[firsts] += restart
    return np.cumsum(gaps, out=gaps), ends


def _tail_contributions(
    book: _Book, factor: np.ndarray, blocks: list[tuple[int, int]], losses: np.ndarray,
    level: float, seed: int, workers: int,
) -> np.ndarray:
    """Each loan's mean loss over the tail scenarios, by replaying the blocks holding them."""
    in_tail = np.zeros(losses.size, dtype=bool)
    in_tail[tail_scenarios(losses, level)] = True
    starts = np.array([start for start, _ in blocks])
    holding = np.unique(np.searchsorted(starts, np.flatnonzero(in_tail), side="right") - 1)

    def tail_defaults(number: int) -> np.ndarray:
        start, stop = blocks[number]
        draws = _draw_block(book, factor, blocks[number], seed)
        return draws.defaults_in(in_tail[start:stop], book.index.size)

    counts = np.zeros(book.index.size, dtype=np.int64)
    for block_counts in _in_order(tail_defaults, holding.tolist(), workers):
        counts += block_counts
    contributions = np.zeros(book.n_loans)
    contributions[book.index] = counts * book.loss / in_tail.sum()
    contributions[book.certain] = book.certain_losses
    return contributions
