"""The bank as a Flower client: DP-SGD rounds, write-ahead privacy spend, held-out evaluation."""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from dataclasses import replace

import numpy as np
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar, ndarray_to_bytes

from fedrisk.client.bank import Bank
from fedrisk.client.evaluation import HeldOutEvaluation, plan_evaluation
from fedrisk.config import RunConfig
from fedrisk.models import ModelSpec, build_model, model_arrays, save_model, set_model_arrays
from fedrisk.privacy.accounting import (
    DPSchedule,
    PrivacyBudgetExceeded,
    check_budget,
    compose_epsilon,
    plan_schedule,
)
from fedrisk.privacy.dpsgd import TrainingSettings, train_locally
from fedrisk.privacy.policy import PolicyRefusal
from fedrisk.privacy.release import check_lifetime

log = logging.getLogger("fedrisk.bank")


def model_spec_for(bank: Bank, config: RunConfig) -> ModelSpec:
    """The agreed model architecture over this contract's encoding."""
    n_grades = len(bank.contract.grade_levels) if bank.contract.grade else 0
    return ModelSpec(config.model, bank.contract.n_features, config.hidden_layers,
                     bank.contract.prior_default_rate, n_grades)


class BankClient(NumPyClient):
    """One bank: trains on its own rows and returns only a model update and scalars."""

    def __init__(self, bank: Bank, config: RunConfig, run_id: int) -> None:
        """Bind the bank's private context to this run's configuration."""
        self.bank = bank
        self.config = config
        self.run_id = str(run_id)
        self.spec = model_spec_for(bank, config)

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        """Initial weights, seeded from the run config only (no data involved)."""
        return list(model_arrays(build_model(self.spec, self.config.seed)).values())

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[
            NDArrays, int, dict[str, Scalar]]:
        """Train one round locally and return the update (local − global weights).

        Under DP the round's spend is appended to the bank's signed ledger *before*
        training starts (write-ahead): a bank that crashes or times out after
        training is still charged. A bank whose budget cannot cover the round raises
        :class:`PrivacyBudgetExceeded`, which Flower turns into an error reply.
        """
        server_round = int(config["server-round"])
        model = build_model(self.spec, self.config.seed)
        set_model_arrays(model, parameters)
        schedule, spend = (self._charge(server_round) if self.config.record_level_dp
                           else (None, None))
        result = train_locally(model, self.bank.train_features, self.bank.train_labels,
                               self._settings(), schedule,
                               seed=self.config.seed * 10_007 + server_round,
                               grades=self.bank.train_grades)
        if schedule is not None and result.history[-1][2] != schedule.steps_per_round:
            raise RuntimeError("DP-SGD took a different number of steps than it was charged")
        update = [local - np.asarray(glob, dtype=np.float32) for local, glob in zip(
            model_arrays(model).values(), parameters, strict=True)]
        self.bank.ledger.append("note", {
            "run_id": self.run_id, "round": server_round, "event": "update computed",
            "update_sha256": hashlib.sha256(b"".join(map(ndarray_to_bytes, update))).hexdigest(),
        })
        size = self.published_size()
        metrics = self._fit_metrics(size, schedule, spend)
        return update, size, metrics | {"ledger_head": self.bank.ledger.head_hash}

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[
            float, int, dict[str, Scalar]]:
        """Evaluate the global model on the held-out split (:mod:`fedrisk.client.evaluation`).

        Under DP only noisy, accounted histograms leave. On the last round (config
        ``personalize``), the bank also fine-tunes the global model on its own train split
        (DP, charged to its budget), keeps the personalized model on its own disk and
        releases only the evaluation of it.
        """
        model = build_model(self.spec, self.config.seed)
        set_model_arrays(model, parameters)
        personalize = (self._personalize if config.get("personalize")
                       and self._personalization_epochs() > 0 else None)
        evaluation = HeldOutEvaluation(self.bank, self.config, self.run_id, self.spec)
        loss, n_test, metrics = evaluation.run(model, int(config.get("server-round", 0)),
                                               personalize)
        return loss, n_test, metrics | self.ledger_report()

    def ledger_report(self) -> dict[str, Scalar]:
        """The ledger's id, length and head, taken after the round's last entry.

        The coordinator keeps them, so that a later rollback of this ledger is noticed.
        """
        ledger = self.bank.ledger
        return {"ledger_id": ledger.ledger_id, "ledger_entries": ledger.entry_count,
                "ledger_head": ledger.head_hash}

    def _personalize(self, model, server_round: int) -> dict[str, Scalar]:
        """DP fine-tuning of ``model`` in place on this bank's rows; the result stays here.

        Returns the training spend's ε (run and lifetime) under DP, nothing otherwise.
        """
        cfg = self.config
        schedule, spend = (self._charge(server_round, "personalize") if cfg.record_level_dp
                           else (None, None))
        settings = replace(self._settings(), local_epochs=cfg.personalization_epochs,
                           learning_rate=cfg.personalization_learning_rate, proximal_mu=0.0)
        train_locally(model, self.bank.train_features, self.bank.train_labels, settings,
                      schedule, seed=cfg.seed * 10_007 + server_round + 1,
                      grades=self.bank.train_grades)
        save_model(self.bank.state_dir / "personalized" / f"{self.run_id}.safetensors",
                   self.spec, model_arrays(model), private=True)
        if spend is None:
            return {}
        return {key: spend[key] for key in ("epsilon", "epsilon_lifetime")}

    def _settings(self) -> TrainingSettings:
        mu = self.config.fedprox_mu if self.config.strategy == "fedprox" else 0.0
        return TrainingSettings(self.config.local_epochs, self.config.batch_size,
                                self.config.learning_rate_for(self.config.record_level_dp),
                                self.config.momentum,
                                self.config.max_grad_norm, mu)

    @property
    def accountants(self) -> tuple[str, ...]:
        """What budgets are decided with: the bank's policy accountants plus the run's."""
        return self.bank.policy.accountants_for(self.config)

    def admit(self) -> None:
        """Check the proposed run against the bank's policy before touching a row.

        Raises :class:`PolicyRefusal` naming the policy key the run would break: the run
        config's rules (DP, ε and δ caps, accountant, secure aggregation, split, model),
        and the lifetime cap on this table over the whole planned run; or
        :class:`PrivacyBudgetExceeded` when a dataset-scoped budget is already spent.
        """
        policy, cfg = self.bank.policy, self.config
        policy.check_run(cfg, self.bank.n_train)
        if math.isinf(policy.max_epsilon_lifetime):
            return
        if not cfg.record_level_dp:
            raise PolicyRefusal("max-epsilon-lifetime", "training without DP-SGD has unbounded "
                                "record-level ε, and this table has a lifetime cap")
        prior = (_history_by_run(self.bank.ledger, exclude=self.run_id)
                 if cfg.privacy_budget_scope == "dataset" else [])
        schedule = self._plan(prior)  # PrivacyBudgetExceeded: this data's budget is spent
        run_steps = (cfg.num_server_rounds * schedule.steps_per_round
                     + schedule.personalization_steps)
        evaluation = plan_evaluation(self.bank, cfg).history
        self._check_lifetime([(schedule.noise_multiplier, schedule.sample_rate, run_steps),
                              *evaluation])

    def _check_lifetime(self, planned: list[tuple[float, float, int]]) -> None:
        """Refuse if this table's lifetime ε (everything released, plus ``planned``) > cap."""
        check_lifetime(self.bank.ledger, self.bank.policy, self.accountants, planned)

    def published_size(self) -> int:
        """The bank's training-set size as it may leave, under the policy's ``size-disclosure``.

        ``"public"``: the exact count (the bank declares it public). ``"dp"``: a Gaussian
        noisy count (sensitivity 1, σ = ``size-noise-multiplier``), drawn once per table,
        recorded write-ahead as a ``release_spend`` entry and reused by every later run, so
        it costs ε once.
        """
        policy, ledger = self.bank.policy, self.bank.ledger
        if policy.size_disclosure == "public":
            return self.bank.n_train
        for entry in ledger.entries():
            if entry.kind == "release_spend" and entry.body.get("release") == "size":
                return int(entry.body["value"])
        sigma = policy.size_noise_multiplier
        self._check_lifetime([(sigma, 1.0, 1)])
        rng = np.random.default_rng(secrets.randbits(128))
        value = max(1, round(self.bank.n_train + rng.normal(0.0, sigma)))
        ledger.append("release_spend", {
            "run_id": self.run_id, "round": 0, "release": "size", "population": "training rows",
            "mechanism": "gaussian", "noise_multiplier": sigma, "sensitivity": 1.0,
            "sample_rate": 1.0, "steps": 1, "value": value,
        })
        return value

    def _plan(self, prior: list[tuple[float, float, int]]) -> DPSchedule:
        """Plan the run: σ meets the budget over all rounds plus personalization."""
        cfg = self.config
        return plan_schedule(self.bank.n_train, cfg.batch_size, cfg.local_epochs,
                             cfg.num_server_rounds, cfg.target_epsilon, cfg.target_delta, prior,
                             self.accountants,
                             personalization_epochs=self._personalization_epochs())

    def _personalization_epochs(self) -> int:
        return self.config.personalization_epochs if self.config.personalization != "none" else 0

    def _charge(self, server_round: int, phase: str = "train") -> tuple[DPSchedule, dict]:
        """Plan the phase's DP-SGD, refuse if over budget, and record the spend first.

        ``phase`` is ``"train"`` (one federated round) or ``"personalize"`` (the
        bank-local fine-tuning after the last round). Returns the schedule and the
        ``privacy_spend`` entry written (with ε of the run and lifetime after it).
        """
        cfg, ledger = self.config, self.bank.ledger
        prior = (_history_by_run(ledger, exclude=self.run_id)
                 if cfg.privacy_budget_scope == "dataset" else [])
        try:
            schedule = self._plan(prior)
            steps = schedule.steps_per_round if phase == "train" else schedule.personalization_steps
            check_budget([*prior, *ledger.privacy_history(self.run_id)], schedule,
                         cfg.target_epsilon, cfg.target_delta, self.accountants, steps)
            self._check_lifetime([(schedule.noise_multiplier, schedule.sample_rate, steps)])
        except PrivacyBudgetExceeded as refusal:
            ledger.append("refusal", {"run_id": self.run_id, "round": server_round,
                                      "phase": phase, "reason": str(refusal)})
            log.warning("bank %s refuses round %s: %s", self.bank.bank_id, server_round, refusal)
            raise
        if cfg.target_delta >= 1 / self.bank.n_train:
            log.warning("bank %s: δ=%g is not below 1/n=%g; the guarantee is weak",
                        self.bank.bank_id, cfg.target_delta, 1 / self.bank.n_train)
        step = (schedule.noise_multiplier, schedule.sample_rate, steps)
        run_history = [*ledger.privacy_history(self.run_id), step]
        lifetime = [*ledger.privacy_history(None), step]
        spend = {
            "run_id": self.run_id, "round": server_round, "phase": phase,
            "noise_multiplier": schedule.noise_multiplier, "sample_rate": schedule.sample_rate,
            "steps": steps, "max_grad_norm": cfg.max_grad_norm,
            "delta": cfg.target_delta, "accountant": self.accountants[0],
            "accountants": list(self.accountants),
            "epsilon": compose_epsilon(run_history, cfg.target_delta, self.accountants),
            "epsilon_lifetime": compose_epsilon(lifetime, cfg.target_delta, self.accountants),
        }
        ledger.append("privacy_spend", spend)
        return schedule, spend

    def _fit_metrics(self, size: int, schedule: DPSchedule | None,
                     spend: dict | None) -> dict[str, Scalar]:
        # No training loss: an un-noised statistic of the training rows never leaves.
        metrics: dict[str, Scalar] = {"bank_id": self.bank.bank_id, "n_train": size,
                                      "dp": schedule is not None,
                                      "n_grades": self.spec.n_grades,
                                      "prior_default_rate": self.spec.prior_default_rate}
        if schedule is None:
            return metrics
        # ε as composed and signed into the ledger, before training, for this round.
        return metrics | {
            "epsilon": spend["epsilon"],
            "epsilon_lifetime": spend["epsilon_lifetime"],
            "delta": self.config.target_delta,
            "noise_multiplier": schedule.noise_multiplier,
            "sample_rate": schedule.sample_rate,
            "steps": schedule.steps_per_round,
        }


def _history_by_run(ledger, exclude: str) -> list[tuple[float, float, int]]:
    """Accountant history of every run on this data except ``exclude``."""
    return [
        (e.body["noise_multiplier"], e.body["sample_rate"], e.body["steps"])
        for e in ledger.entries()
        if e.kind == "privacy_spend" and e.body["run_id"] != exclude
    ]
