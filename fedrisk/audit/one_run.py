"""The one-run ε lower bound of Steinke, Nasr and Jagielski (2023), with abstentions.

"Privacy auditing with one (1) training run", NeurIPS 2023, arXiv 2305.08846. The
auditor draws a secret ``S ∈ {−1, +1}^m`` (canary ``i`` is in the training data iff
``Sᵢ = +1``, each with probability 1/2), trains once, scores every canary, and guesses
``Tᵢ = +1`` for the ``k₊`` highest scores, ``Tᵢ = −1`` for the ``k₋`` lowest and abstains
(``Tᵢ = 0``) on the rest: ``r = k₊ + k₋`` guesses, ``W`` of them correct (the paper's
Algorithm 1).

If the training run is (ε, δ)-DP with respect to each canary, then for every ``v``
(the paper's main theorem, Theorem 3.1, with δ > 0 as proved in its Section 5 and
computed in its Appendix D)::

    P[W ≥ v] ≤ f(v) + 2·m·δ · max_{1 ≤ i ≤ v} (f(v − i) − f(v)) / i,
    f(v) = P[Binomial(r, e^ε / (1 + e^ε)) ≥ v],

for δ = 0 simply ``W`` is stochastically dominated by ``Binomial(r, e^ε/(1+e^ε))``: the
guesses are no better than ε-DP randomized response. The right-hand side is the
p-value of the hypothesis "the run is (ε, δ)-DP"; the lower bound at confidence
``1 − α`` is the largest ε whose p-value is below ``α`` (the paper's Appendix D search).

The numbers of guesses are a grid fixed before the scores are seen
(:data:`GUESS_GRID`), each tried at ``α / len(grid)`` (Bonferroni), so the reported
maximum still holds with probability at least ``1 − α``: a correct mechanism is reported
above its true ε with probability at most α (5% at the default 95% confidence), whatever
the data, the model and the number of canaries.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binom

GUESS_GRID = ((0.01, 0.01), (0.025, 0.025), (0.05, 0.05), (0.4, 0.0))
"""Guesses ``(k₊, k₋)`` as shares of the canaries: "in" on the highest scores, "out" on
the lowest.

Fixed before any score. The symmetric pairs come from a simulation of Dirac canaries at
the default run's σ, q and steps (2-10% of the canaries guessed gives a correct
mechanism its highest bound); the one-sided 40% lets a broken mechanism, whose
included canaries all score above the rest, reach a bound far above any claim even
when some included canaries were never sampled (and tie with the excluded ones).
"""


def p_value(m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[W ≥ correct] under (ε, δ)-DP: the paper's bound (Theorem 3.1; Appendix D).

    Args:
        m: canaries, each in the training data independently with probability 1/2.
        guesses: guesses made (``r``; abstentions excluded).
        correct: correct guesses (``v``).
        epsilon: ε of the DP guarantee under test (the null hypothesis).
        delta: δ of that guarantee.

    """
    if correct <= 0:
        return 1.0
    q = 1 / (1 + math.exp(-epsilon))
    tail = float(binom.sf(correct - 1, guesses, q))
    if delta == 0:
        return min(tail, 1.0)
    shifts = np.arange(1, correct + 1)
    below = binom.sf(correct - shifts - 1, guesses, q) - tail  # P[v − i ≤ Bin < v]
    return float(min(tail + 2 * m * delta * np.max(below / shifts), 1.0))


def epsilon_from_guesses(m: int, guesses: int, correct: int, delta: float,
                         significance: float) -> float:
    """Largest ε whose p-value stays below ``significance``: (ε, δ)-DP is rejected there.

    Returns 0 when not even ε = 0 is rejected. The p-value decreases in ε, so the
    bound is the root of ``p_value(ε) = significance`` (bracketed, then ``brentq``).
    """
    def gap(epsilon: float) -> float:
        return significance - p_value(m, guesses, correct, epsilon, delta)

    if gap(0.0) <= 0:
        return 0.0
    low, high = 0.0, 1.0
    while gap(high) > 0:
        low, high = high, 2 * high
        if high > 1e3:  # all guesses right with vanishing δ: the bound is the cap
            return low
    return float(brentq(gap, low, high, xtol=1e-6))


def one_run_bound(scores: np.ndarray, included: np.ndarray, delta: float,
                  confidence: float = 0.95,
                  grid: tuple[tuple[float, float], ...] = GUESS_GRID) -> dict[str, Any]:
    """ε lower bound at ``confidence`` from one run's canary scores (higher = "included").

    Privacy meaning: if the audited training run were (ε, δ)-DP for each canary with ε
    below the returned ``epsilon_lower_bound``, guesses this good would happen with
    probability under ``1 − confidence``. Ties between scores are broken by the canaries'
    order, which the secret inclusion does not depend on.

    Args:
        scores: one score per canary (all ``m`` of them).
        included: whether each canary was in the training data (the secret ``S``).
        delta: the δ of the claim under test.
        confidence: 1 − α; α is split evenly over ``grid`` (Bonferroni).
        grid: ``(k₊, k₋)`` guess counts as shares of ``m``, fixed in advance.

    """
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = len(scores)
    order = np.argsort(scores, kind="stable")
    significance = (1 - confidence) / len(grid)
    tried = []
    for top_share, bottom_share in grid:
        top, bottom = int(top_share * m), int(bottom_share * m)
        guesses = top + bottom
        correct = int(included[order[m - top:]].sum() + (~included[order[:bottom]]).sum()) \
            if guesses else 0
        tried.append({"top": top, "bottom": bottom, "guesses": guesses, "correct": correct,
                      "epsilon_lower_bound": epsilon_from_guesses(m, guesses, correct, delta,
                                                                  significance)})
    best = max(tried, key=lambda t: t["epsilon_lower_bound"])
    return {"epsilon_lower_bound": best["epsilon_lower_bound"], "guesses": best["guesses"],
            "correct": best["correct"], "canaries": m, "included": int(included.sum()),
            "confidence": confidence, "delta": delta, "candidates": tried}
