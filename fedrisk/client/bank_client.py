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
from fedrisk.client.refusal import BUDGET_KEY
from fedrisk.config import RunConfig
from fedrisk.models import ModelSpec, build_model, model_arrays, save_model, set_model_arrays
from fedrisk.privacy.accounting import (
    DPSchedule,
    History,
    PrivacyBudgetExceeded,
    capped_noise,
    check_budget,
    compose_epsilon,
    plan_schedule,
)
from fedrisk.privacy.dpsgd import TrainingSettings, train_locally
from fedrisk.privacy.policy import PolicyRefusal
from fedrisk.privacy.release import EVALUATION_RELEASES, check_lifetime, release_history

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
        training is still charged. σ is planned for the rest of the run from this run's
        spends in the bank's own ledger (:meth:`_schedule`). A bank whose budget cannot
        cover the round records a ``refusal`` and raises ``PolicyRefusal("privacy-budget")``,
        which the egress guard sends as ``refused: privacy-budget``.
        """
        server_round = int(config["server-round"])
        schedule, spend = (self._charge(server_round) if self.config.record_level_dp
                           else (None, None))
        model = build_model(self.spec, self.config.seed)
        set_model_arrays(model, parameters)
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
                       and self.config.fine_tuning_epochs > 0 else None)
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
                                self.config.momentum, self.config.max_grad_norm, mu,
                                self.config.max_steps_per_epoch)

    @property
    def accountants(self) -> tuple[str, ...]:
        """What budgets are decided with: the bank's policy accountants plus the run's."""
        return self.bank.policy.accountants_for(self.config)

    def admit(self) -> None:
        """Check the proposed run against the bank's policy before touching a row.

        Raises :class:`PolicyRefusal` naming the policy key the run would break: the run
        config's rules (DP, ε and δ caps, accountant, secure aggregation, split, model),
        a run id this bank already charged under another run config (``run-config``),
        and the lifetime cap on this table over what is left of the run; or
        :class:`PrivacyBudgetExceeded` when a dataset-scoped budget is already spent.
        """
        policy, cfg = self.bank.policy, self.config
        policy.check_run(cfg, self.bank.n_train)
        self._check_same_run_config()
        if math.isinf(policy.max_epsilon_lifetime):
            return
        if not cfg.record_level_dp:
            raise PolicyRefusal("max-epsilon-lifetime", "training without DP-SGD has unbounded "
                                "record-level ε, and this table has a lifetime cap")
        prior, spent = self._histories()
        spends = self._run_spends()
        done = len({b["round"] for b in spends if b.get("phase") == "train"})
        left = max(cfg.num_server_rounds - done, 0)
        personalize = left > 0 or not any(b.get("phase") == "personalize" for b in spends)
        schedule = self._schedule(prior, spent, left, personalize)  # PrivacyBudgetExceeded
        run_steps = left * schedule.steps_per_round + schedule.personalization_steps
        evaluation = plan_evaluation(
            self.bank, cfg, release_history(self.bank.ledger, self.run_id, EVALUATION_RELEASES),
            done + 1)
        self._check_lifetime([(schedule.noise_multiplier, schedule.sample_rate, run_steps),
                              *[(evaluation.noise_multiplier, 1.0, 1)] * evaluation.left])

    def _run_spends(self) -> list[dict]:
        """The ``privacy_spend`` bodies of this run in the bank's own ledger."""
        return [e.body for e in self.bank.ledger.entries()
                if e.kind == "privacy_spend" and e.body["run_id"] == self.run_id]

    def _check_same_run_config(self) -> None:
        """Refuse a run id this bank has charged under another run config.

        A resumed run keeps its config; a coordinator re-proposing a known run id with,
        say, a larger ``target-epsilon`` or more rounds would otherwise stretch that run's
        budget. Every ``privacy_spend`` entry carries the run config's fingerprint.
        """
        mine = self.config.fingerprint()
        other = {b["config_sha256"] for b in self._run_spends() if "config_sha256" in b} - {mine}
        if other:
            raise PolicyRefusal("run-config", f"run {self.run_id} was charged under another "
                                f"run config ({sorted(other)[0][:12]}, now {mine[:12]}): a "
                                "resumed run must keep its config")

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

    def _plan(self, prior: History, rounds: int | None = None,
              personalize: bool = True) -> DPSchedule:
        """σ such that ``prior``, ``rounds`` rounds (default: all) and personalization fit."""
        cfg = self.config
        return plan_schedule(self.bank.n_train, cfg.batch_size, cfg.local_epochs,
                             cfg.num_server_rounds if rounds is None else rounds,
                             cfg.target_epsilon, cfg.target_delta, prior, self.accountants,
                             personalization_epochs=cfg.fine_tuning_epochs
                             if personalize else 0,
                             max_steps_per_epoch=cfg.max_steps_per_epoch)

    def _histories(self) -> tuple[History, History]:
        """``(prior, spent)``: other runs' spends (scope ``dataset``) and this run's, per ledger."""
        ledger = self.bank.ledger
        prior = (_history_by_run(ledger, exclude=self.run_id)
                 if self.config.privacy_budget_scope == "dataset" else [])
        return prior, ledger.privacy_history(self.run_id)

    def _schedule(self, prior: History, spent: History, rounds_left: int,
                  personalize: bool = True) -> DPSchedule:
        """σ for the rest of this run, from what the bank's own ledger says is spent.

        The run's plan (σ for every round and personalization, planned from ``prior``)
        while the ledger is on it, or the σ of the run's last spend if that still fits.
        Otherwise (a resumed run repeating the round it crashed in, a coordinator
        re-sending rounds or numbering them anew) σ is planned afresh: ``rounds_left``
        rounds and (with ``personalize``, when it is still to come) personalization in the
        budget left after ``spent``. Whatever the coordinator says about rounds, this
        run's ε stays within ``target-epsilon``; :class:`PrivacyBudgetExceeded` when the
        budget left cannot pay a round at up to the policy's ``max-replanned-noise``
        times the planned σ.
        """
        cfg = self.config
        plan = self._plan(prior)
        candidates = [plan]
        if spent and spent[-1][1] == plan.sample_rate:
            candidates.append(replace(plan, noise_multiplier=spent[-1][0]))
        for schedule in candidates:
            schedule = replace(schedule, personalization_steps=schedule.personalization_steps
                               if personalize else 0)
            rest = (schedule.noise_multiplier, schedule.sample_rate,
                    rounds_left * schedule.steps_per_round + schedule.personalization_steps)
            if compose_epsilon([*prior, *spent, rest], cfg.target_delta, self.accountants
                               ) <= cfg.target_epsilon * (1 + 1e-9):
                return schedule
        replanned = self._plan([*prior, *spent], rounds_left, personalize)
        sigma = capped_noise(replanned.noise_multiplier, plan.noise_multiplier,
                             self.bank.policy.max_replanned_noise)
        return replace(replanned, noise_multiplier=sigma)

    def _charge(self, server_round: int, phase: str = "train") -> tuple[DPSchedule, dict]:
        """Plan the phase's DP-SGD, refuse if over budget, and record the spend first.

        ``phase`` is ``"train"`` (one federated round) or ``"personalize"`` (the
        bank-local fine-tuning after the last round). Returns the schedule and the
        ``privacy_spend`` entry written (with ε of the run and lifetime after it).
        """
        cfg, ledger = self.config, self.bank.ledger
        self._check_same_run_config()
        prior, spent = self._histories()
        rounds_left = max(cfg.num_server_rounds - server_round + 1, 1) if phase == "train" else 0
        try:
            schedule = self._schedule(prior, spent, rounds_left)
            steps = schedule.steps_per_round if phase == "train" else schedule.personalization_steps
            check_budget([*prior, *spent], schedule, cfg.target_epsilon, cfg.target_delta,
                         self.accountants, steps)
            self._check_lifetime([(schedule.noise_multiplier, schedule.sample_rate, steps)])
        except PrivacyBudgetExceeded as exhausted:
            ledger.append("refusal", {"run_id": self.run_id, "round": server_round,
                                      "phase": phase, "policy_key": BUDGET_KEY,
                                      "reason": str(exhausted)})
            raise PolicyRefusal(BUDGET_KEY, f"{phase} of round {server_round}: {exhausted}",
                                recorded=True) from None
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
            "config_sha256": cfg.fingerprint(),
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
