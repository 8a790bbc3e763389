"""A bank's evaluation of a model on its held-out split, and what of it may leave.

Under DP (the default), evaluation releases only DP statistics of the held-out rows:
the global model's score histograms (defaulters and others) on a public grid around
the contract's prior, after every evaluated round; after the last round also the grade
head's error histogram and the personalized model's score histograms. Each is one
Gaussian release (:mod:`fedrisk.privacy.release`), charged write-ahead in the bank's
ledger against the run's ``eval-epsilon``; the noise multiplier is calibrated up front
so that every planned release of the run fits. AUC, Brier score, KS, loss and counts are
computed from the noisy histograms (post-processing), by the coordinator or here; no
exact statistic leaves, except the held-out size when the bank's policy declares its
sizes public.

Without DP (a labelled non-private baseline) evaluation is exact: loss, counts, AUC,
Brier, KS, grade metrics and 256 + 256 exact histogram counts on the fine grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.common import Scalar
from torch import nn

from fedrisk.client.bank import Bank
from fedrisk.config import RunConfig
from fedrisk.models import ModelSpec
from fedrisk.models.histograms import (
    ScoreGrid,
    eval_grid,
    grade_error_entries,
    grade_error_histogram,
    histogram_entries,
    histogram_log_loss,
    score_histograms,
)
from fedrisk.models.metrics import discrimination_metrics, grade_metrics, predicted_grades
from fedrisk.privacy.accounting import (
    History,
    PrivacyBudgetExceeded,
    calibrate_noise_multiplier,
    capped_noise,
    compose_epsilon,
)
from fedrisk.privacy.dpsgd import predict_logits
from fedrisk.privacy.release import (
    EVALUATION_RELEASES,
    Release,
    charge_release,
    check_lifetime,
    gaussian_release,
    release_history,
)

# Trains the global model in place into the bank's personalized model (DP, charged);
# returns the training spend's metrics (ε of the run and lifetime).
Personalize = Callable[[nn.Module, int], dict[str, Scalar]]


@dataclass(frozen=True)
class EvaluationPlan:
    """The DP evaluation releases one bank makes in one run, planned from public facts.

    Attributes:
        rounds: rounds after which the global model's score histograms are released.
        personalized: after the last round, the personalized model's histograms too.
        grades: after the last round, the grade head's error histogram too.
        noise_multiplier: noise std of every release relative to its L2 sensitivity (1),
            calibrated so that all :attr:`releases` together meet ``eval-epsilon`` at the
            run's δ with the bank's accountants.
        left: the releases still to come, from the round the plan was made for on.

    """

    rounds: tuple[int, ...]
    personalized: bool
    grades: bool
    noise_multiplier: float
    left: int

    @property
    def releases(self) -> int:
        """Number of Gaussian releases the run makes at this bank."""
        return len(self.rounds) + self.personalized + self.grades

    @property
    def history(self) -> History:
        """The planned releases as an accountant history (e.g. for a lifetime cap)."""
        return [(self.noise_multiplier, 1.0, 1)] * self.releases


def plan_evaluation(bank: Bank, config: RunConfig, spent: History = (),
                    from_round: int = 1) -> EvaluationPlan:
    """Plan a run's evaluation releases at ``bank`` from round ``from_round`` on.

    ``spent``: the run's evaluation releases already in the bank's ledger. While they
    are what the run's plan foresaw, σ is the plan's (every planned release at one σ,
    meeting ``eval-epsilon``); when they are more (a resumed run evaluating a round
    again), σ is calibrated anew so that the releases left fit in what is left, up to the
    policy's ``max-replanned-noise`` times the planned σ (else ``PrivacyBudgetExceeded``).
    """
    personalized = config.personalization != "none"
    grades = bank.test_grades is not None
    rounds = config.evaluation_rounds
    accountants = bank.policy.accountants_for(config)
    sigma = calibrate_noise_multiplier(config.eval_epsilon, config.target_delta, 1.0,
                                       len(rounds) + personalized + grades,
                                       accountant=accountants)
    final = personalized + grades if from_round <= config.num_server_rounds else 0
    left = len([r for r in rounds if r >= from_round]) + final
    if spent and compose_epsilon([*spent, (sigma, 1.0, left)], config.target_delta,
                                 accountants) > config.eval_epsilon * (1 + 1e-9):
        sigma = capped_noise(calibrate_noise_multiplier(
            config.eval_epsilon, config.target_delta, 1.0, max(left, 1), spent, accountants),
            sigma, bank.policy.max_replanned_noise)
    return EvaluationPlan(rounds, personalized, grades, sigma, left)


class HeldOutEvaluation:
    """One evaluate message at a bank: score the held-out split, return what may leave."""

    def __init__(self, bank: Bank, config: RunConfig, run_id: str, spec: ModelSpec) -> None:
        """Bind the bank's held-out rows to this run's configuration and model spec."""
        self.bank = bank
        self.config = config
        self.run_id = run_id
        self.spec = spec

    def run(self, model: nn.Module, server_round: int, personalize: Personalize | None
            ) -> tuple[float, int, dict[str, Scalar]]:
        """Evaluate ``model`` (and, with ``personalize``, the bank's personalized model).

        Returns Flower's ``(loss, num_examples, metrics)``. Under DP the metrics hold the
        noisy histograms and the evaluation ε (``epsilon_eval``, ``epsilon_eval_lifetime``,
        ``eval_noise_multiplier``); loss and num_examples are read off the noisy histograms.
        """
        if not self.config.dp:
            return self._exact(model, personalize, server_round)
        return self._private(model, personalize, server_round)

    def _exact(self, model: nn.Module, personalize: Personalize | None,
               server_round: int) -> tuple[float, int, dict[str, Scalar]]:
        logits, labels = predict_logits(model, self.bank.test_features), self.bank.test_labels
        probabilities = 1 / (1 + np.exp(-logits))
        positive, negative = score_histograms(logits, labels)
        metrics: dict[str, Scalar] = {"bank_id": self.bank.bank_id, "n_test": len(labels)}
        metrics |= discrimination_metrics(probabilities, labels)
        metrics |= histogram_entries(positive, negative)
        if self.bank.test_grades is not None:
            metrics |= grade_metrics(self._grade_scores(model), self.bank.test_grades,
                                     self.spec.n_grades)
        if personalize is not None:
            metrics |= personalize(model, server_round)
            personal = discrimination_metrics(
                1 / (1 + np.exp(-predict_logits(model, self.bank.test_features))), labels)
            metrics |= {"personalized_auc": personal["auc"],
                        "personalized_brier": personal["brier"]}
        eps = 1e-7
        loss = float(-np.mean(labels * np.log(probabilities + eps)
                              + (1 - labels) * np.log(1 - probabilities + eps)))
        return loss, len(labels), metrics

    def _private(self, model: nn.Module, personalize: Personalize | None,
                 server_round: int) -> tuple[float, int, dict[str, Scalar]]:
        spent = release_history(self.bank.ledger, self.run_id, EVALUATION_RELEASES)
        try:
            plan = plan_evaluation(self.bank, self.config, spent, server_round)
        except PrivacyBudgetExceeded as exhausted:  # recorded as charge_release records it
            self.bank.ledger.append("refusal", {"run_id": self.run_id, "round": server_round,
                                                "phase": "evaluation", "reason": str(exhausted)})
            raise
        grid = eval_grid(self.spec.prior_default_rate, self.config.eval_bins,
                         self.config.eval_logit_low, self.config.eval_logit_high)
        positive, negative, spend = self._release_scores(model, grid, plan, server_round,
                                                         "evaluation")
        metrics: dict[str, Scalar] = {"bank_id": self.bank.bank_id}
        metrics |= histogram_entries(positive, negative)
        if plan.grades and server_round == self.config.num_server_rounds:
            errors = grade_error_histogram(
                predicted_grades(self._grade_scores(model), self.spec.n_grades),
                self.bank.test_grades)
            spend = self._charge(plan, server_round, "evaluation-grade")
            metrics |= grade_error_entries(gaussian_release(errors, plan.noise_multiplier))
        if personalize is not None and plan.personalized:
            metrics |= personalize(model, server_round)
            personal_pos, personal_neg, spend = self._release_scores(
                model, grid, plan, server_round, "evaluation-personalized")
            metrics |= histogram_entries(personal_pos, personal_neg, "personalized_hist")
        metrics |= {"epsilon_eval": spend["epsilon_eval"],
                    "epsilon_eval_lifetime": spend["epsilon_eval_lifetime"],
                    "eval_noise_multiplier": plan.noise_multiplier}
        size = max(0, int(positive.sum() + negative.sum()))
        if self.bank.policy.size_disclosure == "public":
            size = metrics["n_test"] = len(self.bank.test_labels)
        return histogram_log_loss(positive, negative, grid), size, metrics

    def _release_scores(self, model: nn.Module, grid: ScoreGrid, plan: EvaluationPlan,
                        server_round: int, release: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """Charge, then release the noisy score histograms of ``model`` on the held-out split."""
        positive, negative = grid.histograms(predict_logits(model, self.bank.test_features),
                                             self.bank.test_labels)
        spend = self._charge(plan, server_round, release)
        return (gaussian_release(positive, plan.noise_multiplier),
                gaussian_release(negative, plan.noise_multiplier), spend)

    def _charge(self, plan: EvaluationPlan, server_round: int, release: str) -> dict:
        """Write-ahead: the ``release_spend`` entry is on disk before any noise is drawn."""
        accountants = self.bank.policy.accountants_for(self.config)
        check_lifetime(self.bank.ledger, self.bank.policy, accountants,
                       [(plan.noise_multiplier, 1.0, 1)])
        return charge_release(self.bank.ledger, Release(
            self.run_id, server_round, release, plan.noise_multiplier, self.config.target_delta,
            self.bank.policy.accountants_for(self.config)), self.config.eval_epsilon)

    def _grade_scores(self, model: nn.Module) -> np.ndarray:
        with torch.no_grad():
            model.eval()
            _, scores = model(torch.from_numpy(self.bank.test_features), with_grade=True)
        return scores.numpy()
