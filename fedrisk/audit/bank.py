"""One bank's part of the audit, computed on its own host from its own rows and the final model.

The part is plain JSON: metrics, curves thinned to a fixed grid, and additive
statistics over groups and bins. It holds no row, no per-record score and no
applicant's values, so a bank can hand it to the consortium report
(:func:`fedrisk.audit.report.merge_bank_parts`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from fedrisk.config import RunConfig
from fedrisk.data import Contract, stratified_split
from fedrisk.models import ModelSpec, load_model
from fedrisk.models.histograms import FINE_GRID, eval_grid
from fedrisk.privacy.accounting import DPSchedule
from fedrisk.privacy.chain import TrustedKeys

from .canary import check_accounting, check_training_path
from .canary_run import (
    DEFAULT_CANARIES,
    DEFAULT_CONFIDENCE,
    DEFAULT_INPUT_CANARIES,
    ShadowRun,
    black_box_audit,
    white_box_audit,
)
from .dp_spec import bank_dp_spec
from .eval_attack import DEFAULT_TRIALS, measure_eval_attack
from .explanations import bank_explanations
from .fairness import bank_fairness, operating_threshold
from .mia import ReferenceSetup, audit_model, model_logits, reference_masks, train_references
from .trainer import TrainFn, TrainPlan, bank_training_path
from .utility import bank_utility

DEFAULT_REFERENCES = 4


@dataclass(frozen=True)
class RunFacts:
    """What every bank knows about the run: its id, run config and the model architecture.

    Attributes:
        run_id: Flower run id (as in every ledger entry of the run).
        config: the run config (metrics.json ``config``, run-config keys with ``-``).
        spec: the agreed model architecture of the final model.

    """

    run_id: str
    config: dict[str, Any]
    spec: ModelSpec

    @property
    def dp(self) -> bool:
        """Whether the run claimed DP (its evaluation releases are DP at every dp-level)."""
        return bool(self.config.get("dp", True))

    @property
    def record_level(self) -> bool:
        """Whether the banks trained with DP-SGD (not ``dp-level = "institution"`` alone)."""
        return self.dp and self.config.get("dp-level", "record") != "institution"

    def plan(self) -> TrainPlan:
        """The run's local optimizer settings."""
        return TrainPlan.from_recorded_config(self.config, self.record_level)


@dataclass
class BankData:
    """One bank's private inputs to its audit part (never leave the bank).

    Attributes:
        bank_id: the bank's public id.
        table: the bank's own table (train and held-out rows, before the split).
        contract: the consortium's data contract.
        state_dir: the bank's state directory (``ledgers/``, ``personalized/``), if any.
        reported: the bank's entry of metrics.json (what it told the coordinator), if any.
        split: the bank's own held-out split as ``(test_fraction, split_seed)`` (its
            policy's); None uses the run config's ``test-fraction`` and ``seed``.
        trusted_keys: registered ledger keys to pin the bank's ledgers to, if any.

    """

    bank_id: str
    table: pd.DataFrame
    contract: Contract
    state_dir: Path | None = None
    reported: dict[str, Any] = field(default_factory=dict)
    split: tuple[float, int] | None = None
    trusted_keys: TrustedKeys | None = None


@dataclass(frozen=True)
class AuditSettings:
    """Knobs of the audit itself (recorded in the report).

    Attributes:
        n_reference: reference models per bank (even: complementary pairs).
        seed: seed of the reference splits and explanation samples (the references'
            DP noise comes from the OS, as in the banks' training).
        threshold: PD cut-off for approvals (default: :func:`operating_threshold`).
        implementation_check: run the canary test of the DP path (DP runs only).
        eval_attack_trials: releases per side of the crafted-model attack on the
            evaluation (target held out, and not).
        canaries: gradient canaries of the one-run white-box audit (0: no canary audit);
            the bound's power grows with them (see :mod:`fedrisk.audit.canary_run`).
        input_canaries: crafted records of the one-run black-box audit (0: none).
        canary_confidence: confidence of the canary bounds: a correct mechanism is
            reported above its claim with probability at most ``1 − canary_confidence``.
        claimed_epsilon: audit every bank against this ε instead of its ledger's (e.g. a
            ``--no-dp`` run someone claims is private); None: each bank's own claim.

    """

    n_reference: int = DEFAULT_REFERENCES
    seed: int = 0
    threshold: float | None = None
    implementation_check: bool = True
    eval_attack_trials: int = DEFAULT_TRIALS
    canaries: int = DEFAULT_CANARIES
    input_canaries: int = DEFAULT_INPUT_CANARIES
    canary_confidence: float = DEFAULT_CONFIDENCE
    claimed_epsilon: float | None = None


def bank_audit(bank: BankData, model: nn.Module, run: RunFacts,
               settings: AuditSettings | None = None, train_fn: TrainFn | None = None
               ) -> dict[str, Any]:
    """Audit the final model on one bank's own data: sections 2-7 for this bank.

    Privacy meaning: everything that needs rows (membership inference, fairness,
    explanations, utility) runs here; the returned part holds only aggregates.
    """
    settings = settings or AuditSettings()
    train_fn = train_fn or bank_training_path()
    started = time.monotonic()
    config, contract = run.config, bank.contract
    test_fraction, split_seed = bank.split or (float(config.get("test-fraction", 0.2)),
                                               int(config.get("seed", 0)))
    train, test = stratified_split(bank.table, contract, test_fraction, split_seed)
    split = _Split(contract, train, test, with_grades=run.spec.n_grades > 0)
    fingerprint = contract.fingerprint(bank.table)
    threshold = settings.threshold or operating_threshold(contract)
    dp_spec = _dp_spec(bank, run, fingerprint, len(train))
    privacy = _membership(split, model, run, dp_spec, bank, settings, train_fn)
    part = {
        "bank_id": bank.bank_id, "n_train": len(train), "n_test": len(test),
        "fingerprint": fingerprint,
        "ledger_fingerprint_matches": bool(dp_spec["ledger"].get("matches_data")),
        "dp_spec": dp_spec, "membership": privacy,
        "implementation_check": _implementation(dp_spec, run, len(train), settings, train_fn),
        "eval_attack": _eval_attack(split, run, dp_spec, settings),
        "canary_audit": _canary_audit(split, run, dp_spec, settings, train_fn),
        "fairness": bank_fairness(contract, test, split.test_logits(model), split.y_test,
                                  threshold),
        "explanations": bank_explanations(model, contract, train, test, threshold,
                                          settings.seed),
        "utility": bank_utility(split.test_logits(model), split.y_test),
        "threshold": threshold,
    }
    part["verdict"] = _verdict(part, run.dp or settings.claimed_epsilon is not None,
                               settings.claimed_epsilon, run.record_level)
    part["seconds"] = round(time.monotonic() - started, 2)
    return part


class _Split:
    """The bank's encoded train (members) and held-out (non-members) rows."""

    def __init__(self, contract: Contract, train: pd.DataFrame, test: pd.DataFrame,
                 with_grades: bool = False) -> None:
        self.x_train, self.y_train = contract.encode(train), contract.labels(train)
        self.grades = (np.concatenate([contract.grades(train), contract.grades(test)])
                       if with_grades and contract.grade else None)
        self.x_test, self.y_test = contract.encode(test), contract.labels(test)
        self.features = np.concatenate([self.x_train, self.x_test])
        self.labels = np.concatenate([self.y_train, self.y_test])
        self.is_member = np.r_[np.ones(len(train), bool), np.zeros(len(test), bool)]

    def test_logits(self, model: nn.Module) -> np.ndarray:
        return model_logits(model, self.x_test)

    @property
    def grades_train(self) -> np.ndarray | None:
        return None if self.grades is None else self.grades[:len(self.y_train)]


def _dp_spec(bank: BankData, run: RunFacts, fingerprint: str, n_train: int) -> dict[str, Any]:
    if bank.state_dir is None:
        return {"dp": run.dp, "source": "none", "ledger": {"present": False, "ok": False},
                "delta": float(run.config.get("target-delta", 1e-5)), "phases": []}
    return bank_dp_spec(bank.state_dir, bank.bank_id, fingerprint, run.run_id, n_train,
                        run.config, bank.reported, bank.trusted_keys)


def _reference_setup(run: RunFacts, dp_spec: dict[str, Any]) -> ReferenceSetup:
    """References copy the bank's per-step mechanism: same σ, C, batch size, epochs, rounds.

    With half the rows, the same batch size doubles the sample rate, so a reference
    spends more ε than the bank did: it is at least as fitted to its data as the target.
    """
    config = run.config
    rounds = int(dp_spec.get("rounds_joined") or config.get("num-server-rounds", 5))
    sigma = dp_spec.get("noise_multiplier")
    plan = run.plan()

    def schedule_for(n: int) -> DPSchedule | None:
        if not run.record_level or not isinstance(sigma, float | int):
            return None
        per_epoch = plan.steps_per_epoch(n)
        return DPSchedule(1 / per_epoch, plan.local_epochs * per_epoch, float(sigma))

    return ReferenceSetup(run.spec, int(config.get("seed", 0)), plan, rounds, schedule_for)


def _membership(split: _Split, model: nn.Module, run: RunFacts, dp_spec: dict[str, Any],
                bank: BankData, settings: AuditSettings, train_fn: TrainFn) -> dict[str, Any]:
    """Attacks on the global model and, if the bank kept one, its personalized model."""
    delta = float(dp_spec.get("delta") or run.config.get("target-delta", 1e-5))
    masks = reference_masks(split.labels, settings.n_reference, settings.seed)
    ref_logits = train_references(_reference_setup(run, dp_spec), train_fn, split.features,
                                  split.labels, masks, settings.seed, split.grades
                                  ) if len(masks) else None
    result = {"global": audit_model(model_logits(model, split.features), split.labels,
                                    split.is_member, ref_logits, masks, delta),
              "n_reference": settings.n_reference, "delta": delta}
    personalized = _personalized_model(bank, run)
    if personalized is not None:
        result["personalized"] = audit_model(model_logits(personalized, split.features),
                                             split.labels, split.is_member, ref_logits, masks,
                                             delta)
    return result


def _personalized_model(bank: BankData, run: RunFacts) -> nn.Module | None:
    if bank.state_dir is None:
        return None
    path = bank.state_dir / "personalized" / f"{run.run_id}.safetensors"
    return load_model(path)[1] if path.is_file() else None


def _eval_attack(split: _Split, run: RunFacts, dp_spec: dict[str, Any],
                 settings: AuditSettings) -> dict[str, Any]:
    """The crafted-model attack on this bank's evaluation release, at its own σ_eval.

    Under DP the grid is the run's public evaluation grid and the noise the bank's from
    its ledger (none recorded: the attack meets exact counts, as a leak should show);
    without DP, the fine grid of exact evaluation.
    """
    config, defaults = run.config, RunConfig()
    grid = (eval_grid(run.spec.prior_default_rate,
                      int(config.get("eval-bins", defaults.eval_bins)),
                      float(config.get("eval-logit-low", defaults.eval_logit_low)),
                      float(config.get("eval-logit-high", defaults.eval_logit_high)))
            if run.dp else FINE_GRID)
    sigma = dp_spec.get("eval_noise_multiplier")
    sigma = min(sigma) if isinstance(sigma, list) else float(sigma or 0.0)
    accountants = tuple(dp_spec.get("eval_accountants") or (config.get("accountant", "rdp"),))
    return measure_eval_attack(split.x_test, split.y_test, split.x_train, grid, sigma,
                               float(dp_spec.get("delta") or 1e-5), accountants,
                               settings.eval_attack_trials, run.spec.prior_default_rate)


def _shadow_run(run: RunFacts, dp_spec: dict[str, Any]) -> ShadowRun | None:
    """The mechanism the bank ran on its training rows: its ledger's rounds, σ, q and steps.

    None for a DP run whose verified ledger holds no training spend of this run (nothing
    to replay); a non-private run replays the run config's rounds without DP.
    """
    config = run.config
    clip = dp_spec.get("max_grad_norm")
    plan = run.plan()
    if isinstance(clip, float | int):
        plan = replace(plan, max_grad_norm=float(clip))
    delta = float(dp_spec.get("delta") or config.get("target-delta", 1e-5))
    if not run.dp:
        return ShadowRun(run.spec, int(config.get("seed", 0)), plan, None,
                         int(config.get("num-server-rounds", 5)), delta)
    phases = tuple(DPSchedule(float(p["sample_rate"]), int(p["steps"]),
                              float(p["noise_multiplier"]))
                   for p in dp_spec.get("phases", []) if p.get("phase", "train") == "train")
    if not phases or not dp_spec.get("ledger", {}).get("ok"):
        return None
    return ShadowRun(run.spec, int(config.get("seed", 0)), plan, phases, len(phases), delta)


def _canary_audit(split: _Split, run: RunFacts, dp_spec: dict[str, Any],
                  settings: AuditSettings, train_fn: TrainFn) -> dict[str, Any]:
    """One-run canary audits (white-box headline, black-box beside it) of the bank's mechanism.

    The claim is the global model's ε from the verified ledger (the rounds the shadow run
    replays), or ``settings.claimed_epsilon``.
    """
    claim = (settings.claimed_epsilon if settings.claimed_epsilon is not None
             else dp_spec.get("epsilon_global_model") if run.dp else None)
    source = "--claimed-epsilon" if settings.claimed_epsilon is not None else "ledger"
    if settings.canaries <= 0:
        return {"applicable": False, "claimed_epsilon": claim, "claim_source": source,
                "detail": "canary audit switched off (canaries = 0)"}
    shadow = _shadow_run(run, dp_spec)
    if shadow is None:
        return {"applicable": False, "claimed_epsilon": claim, "claim_source": source,
                "detail": "no verified training spend of this run in the bank's ledger: "
                          "nothing to replay"}
    started = time.monotonic()
    args = (train_fn, shadow, split.x_train, split.y_train, split.grades_train)
    result = {"applicable": True, "claimed_epsilon": claim, "claim_source": source,
              "white_box": white_box_audit(*args, settings.canaries,
                                           settings.canary_confidence)}
    if settings.input_canaries > 0:
        black = black_box_audit(*args, settings.input_canaries, settings.canary_confidence)
        if settings.claimed_epsilon is not None:
            black["epsilon_claim"] = settings.claimed_epsilon
        result["black_box"] = black
    return result | {"seconds": round(time.monotonic() - started, 2)}


def _implementation(dp_spec: dict[str, Any], run: RunFacts, n_train: int,
                    settings: AuditSettings, train_fn: TrainFn) -> dict[str, Any]:
    if not run.record_level:
        return {"applicable": False, "passed": None,
                "detail": ("institution-level DP only: no DP-SGD at the banks to check"
                           if run.dp else
                           "non-private baseline: no DP mechanism or accounting to check"),
                "checks": []}
    if not settings.implementation_check:
        return {"applicable": True, "passed": None, "detail": "skipped", "checks": []}
    sigma = dp_spec.get("noise_multiplier")
    sigma = float(sigma) if isinstance(sigma, float | int) else 0.0
    clip = dp_spec.get("max_grad_norm")
    clip = float(clip) if isinstance(clip, float | int) else float(run.config["max-grad-norm"])
    checks = [*check_training_path(train_fn, sigma, clip, settings.seed),
              *check_accounting(dp_spec, run.config, n_train)]
    return {"applicable": True, "passed": all(c["passed"] for c in checks),
            "noise_multiplier": sigma, "max_grad_norm": clip, "checks": checks}


def _verdict(part: dict[str, Any], dp: bool, claimed_epsilon: float | None = None,
             record_level: bool = True) -> dict[str, Any]:
    """Per model and canary audit: does the empirical lower bound stay at or below the claim.

    ``dp``: the run makes a claim (DP, or ``claimed_epsilon`` given); ``claimed_epsilon``
    replaces the ledger's claim for the trained models and the canary audits. Without
    record-level DP (``dp-level = "institution"``) and no ``claimed_epsilon``, the models
    claim no record-level ε (``passed`` None), so only the evaluation release decides
    ``audit_passed``.
    """
    spec, membership = part["dp_spec"], part["membership"]
    claims_records = record_level or claimed_epsilon is not None

    def claim(value: float | None) -> float | None:
        return claimed_epsilon if claimed_epsilon is not None else value

    rows = {"global": (membership["global"]["epsilon_lower_bound"],
                       claim(spec.get("epsilon_global_model")))}
    if "personalized" in membership:
        rows["personalized"] = (membership["personalized"]["epsilon_lower_bound"],
                                claim(spec.get("epsilon")))
    if "eval_attack" in part:  # claim: ε of one evaluation release (0 if none was noised)
        attack = part["eval_attack"]
        rows["evaluation"] = (attack["epsilon_lower_bound"], attack["epsilon_release"] or 0.0)
    canaries = part.get("canary_audit", {})
    if canaries.get("applicable"):
        rows["canary"] = (canaries["white_box"]["epsilon_lower_bound"],
                          canaries["claimed_epsilon"])
        if "black_box" in canaries:
            rows["canary_black_box"] = (canaries["black_box"]["epsilon_lower_bound"],
                                        canaries["black_box"]["epsilon_claim"])
    verdict: dict[str, Any] = {}
    for name, (bound, value) in rows.items():
        claimed = claims_records or name == "evaluation"
        ok = None if not dp or not claimed or value is None else bool(bound <= value)
        verdict[name] = {"epsilon_lower_bound": bound,
                         "claimed_epsilon": (None if not claimed or value is None
                                             or math.isinf(value) else value),
                         "passed": ok}
    values = [v["passed"] for name, v in verdict.items()
              if claims_records or name == "evaluation"]
    verdict["audit_passed"] = None if not dp else all(v is True for v in values)
    return verdict
