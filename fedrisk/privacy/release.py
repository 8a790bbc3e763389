"""Accounted releases other than DP-SGD: the Gaussian mechanism on counts of a bank's rows.

A release is a vector of counts over a public grid (a score histogram of the held-out
split, say) in which each record lands in exactly one bin, so adding or removing one
record moves the vector by ``sensitivity`` in L2 (1 for one histogram). The bank adds
Gaussian noise of standard deviation ``noise_multiplier × sensitivity`` to every bin and
rounds to integers (post-processing: costs no ε). For the accountants one release is the
Gaussian mechanism without sampling, ``(noise_multiplier, 1.0, 1)`` in an Opacus
history, composed with every other release of the same population by
:func:`~fedrisk.privacy.accounting.compose_epsilon`.

Write-ahead: :func:`charge_release` appends (and fsyncs) a ``release_spend`` entry to the
bank's signed ledger *before* the noise is drawn, so anything that left is charged even
if the bank fails afterwards. Noise comes from the OS entropy pool, never from the run
seed (anyone who knows the run config could otherwise regenerate and subtract it).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrisk.privacy.accounting import (
    Accountants,
    History,
    PrivacyBudgetExceeded,
    compose_epsilon,
)
from fedrisk.privacy.ledger import EgressLedger
from fedrisk.privacy.policy import BankPolicy, PolicyRefusal

log = logging.getLogger("fedrisk.bank")

# What a bank releases about its held-out split: the global model's score histograms
# (every evaluated round), the personalized model's, and the grade head's error histogram.
EVALUATION_RELEASES = ("evaluation", "evaluation-personalized", "evaluation-grade")
HELD_OUT = "held-out"


@dataclass(frozen=True)
class Release:
    """One Gaussian release of counts, as charged before it leaves.

    Attributes:
        run_id / round: the run and round the release belongs to.
        release: what is released (one of :data:`EVALUATION_RELEASES`, or e.g. ``"size"``).
        noise_multiplier: noise standard deviation relative to ``sensitivity``.
        sensitivity: L2 distance one record can move the released counts (1: each record
            is in one bin of one histogram).
        delta: δ at which ε is reported.
        accountants: the accountants ε is computed with (the largest ε counts).
        population: the records the counts are over (``"held-out"``).

    """

    run_id: str
    round: int
    release: str
    noise_multiplier: float
    delta: float
    accountants: Accountants
    sensitivity: float = 1.0
    population: str = HELD_OUT

    @property
    def step(self) -> tuple[float, float, int]:
        """The release in an Opacus accountant history: one Gaussian, no sampling."""
        return (self.noise_multiplier, 1.0, 1)


def release_history(ledger: EgressLedger, run_id: str | None = None,
                    releases: Sequence[str] | None = None) -> History:
    """Accountant history of the ``release_spend`` entries in a bank's ledger.

    ``run_id=None`` takes every run on this table (the bank's lifetime); ``releases``
    keeps only those kinds of release (default: all, including published sizes). Compose
    with the DP-SGD history (``ledger.privacy_history``) for the table's total ε.
    """
    return [
        (float(e.body["noise_multiplier"]), float(e.body["sample_rate"]), int(e.body["steps"]))
        for e in ledger.entries()
        if e.kind == "release_spend"
        and (run_id is None or str(e.body.get("run_id")) == str(run_id))
        and (releases is None or e.body.get("release") in releases)
    ]


def charge_release(ledger: EgressLedger, release: Release, budget: float,
                   family: Sequence[str] = EVALUATION_RELEASES) -> dict:
    """Charge ``release`` against the run's ``budget`` and record it, before anything is drawn.

    ε of the run's releases of ``family`` plus this one must stay within ``budget``;
    otherwise the bank records a ``refusal`` and raises :class:`PrivacyBudgetExceeded`
    (the reply says "privacy budget exhausted", nothing is released). Returns the signed
    ``release_spend`` body: the release, the mechanism, its settings and ``epsilon_eval``
    (this run's releases of the family composed, this one included) and
    ``epsilon_eval_lifetime`` (every run's, on this table).
    """
    run = [*release_history(ledger, release.run_id, family), release.step]
    epsilon = compose_epsilon(run, release.delta, release.accountants)
    if epsilon > budget * (1 + 1e-9):
        reason = (f"privacy budget exhausted: {release.release} would bring this run's "
                  f"evaluation ε to {epsilon:.3f} > eval-epsilon {budget:g}")
        ledger.append("refusal", {"run_id": release.run_id, "round": release.round,
                                  "phase": release.release, "reason": reason})
        log.warning("bank %s refuses: %s", ledger.bank_id, reason)
        raise PrivacyBudgetExceeded(reason)
    lifetime = [*release_history(ledger, None, family), release.step]
    accountants = ([release.accountants] if isinstance(release.accountants, str)
                   else list(release.accountants))
    body = {
        "run_id": release.run_id, "round": release.round, "release": release.release,
        "population": release.population, "mechanism": "gaussian",
        "noise_multiplier": release.noise_multiplier, "sensitivity": release.sensitivity,
        "sample_rate": 1.0, "steps": 1, "delta": release.delta,
        "accountant": accountants[0], "accountants": accountants,
        "epsilon_eval": epsilon,
        "epsilon_eval_lifetime": compose_epsilon(lifetime, release.delta, release.accountants),
    }
    ledger.append("release_spend", body)
    return body


def gaussian_release(counts: np.ndarray, noise_multiplier: float,
                     sensitivity: float = 1.0) -> np.ndarray:
    """``counts`` plus Gaussian noise of std ``noise_multiplier × sensitivity``, rounded.

    The result is a vector of integers, negative where noise outweighs a small count
    (clipping at the bank would bias sums across banks; readers clip after pooling).
    """
    rng = np.random.default_rng(secrets.randbits(128))
    noisy = np.asarray(counts, dtype=np.float64) + rng.normal(
        0.0, noise_multiplier * sensitivity, np.shape(counts))
    return np.rint(noisy).astype(np.int64)


def lifetime_history(ledger: EgressLedger) -> History:
    """Every accounted release on this table: DP-SGD phases and other releases, all runs."""
    return [*ledger.privacy_history(None), *release_history(ledger)]


def check_lifetime(ledger: EgressLedger, policy: BankPolicy, accountants: Accountants,
                   planned: History) -> None:
    """Refuse (``max-epsilon-lifetime``) if this table's lifetime ε would pass the cap.

    The lifetime ε composes everything the bank ever released about the table (training,
    evaluation, published sizes) plus ``planned``, at the policy's ``max-delta``, with
    the largest ε over ``accountants``. Called before every charge, whatever scope a run
    asks for.
    """
    cap = policy.max_epsilon_lifetime
    if cap == float("inf"):
        return
    epsilon = compose_epsilon([*lifetime_history(ledger), *planned], policy.max_delta,
                              accountants)
    if epsilon > cap:
        raise PolicyRefusal("max-epsilon-lifetime", f"this table's lifetime ε would reach "
                            f"{epsilon:.3f} > {cap:g} at δ={policy.max_delta:g}")
