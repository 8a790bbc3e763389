"""Section 4: white-box canary test of the DP-SGD path and of the bank's accounting.

The accountant's ε is only as good as the mechanism it assumes. These checks run
the banks' own training function on crafted data (a logistic model whose
per-record gradients are known exactly) and measure what it actually did:

- **clipping**: one canary record with a gradient thousands of times the clipping
  bound C, all other records with gradient exactly 0, one full-batch step at
  learning rate 1 without momentum: the canary's coordinate of the update, times
  the expected batch size, must be C (±noise), not the raw gradient;
- **noise**: records with gradient exactly 0, so one full-batch step is pure noise;
  its empirical std times the batch size over C must match the noise multiplier
  (chi-square acceptance band, false alarm 1e-6);
- **Poisson sampling**: batch sizes seen by the model over many steps must vary like
  Binomial(n, q) (mean and variance within their 1 - 1e-6 bands), the accountant
  history must record the steps and the rate actually run, and two runs with the
  same (public) seed must not draw the same batches;

and, from the bank's signed ledger:

- **accounting**: every ``privacy_spend`` entry's ε equals the composition of *all*
  steps of the run so far (an accountant reset between rounds reports the ε of one
  round only), metrics.json's ε equals the composition of the whole run, each
  round's steps and sample rate match the bank's n and the run's batch size, and
  the noise multiplier is the one the plan needs for the target ε.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import chi2, norm

from fedrisk.models import ModelSpec, build_model, model_arrays
from fedrisk.privacy.accounting import DPSchedule, steps_per_epoch

from .dp_spec import cached_epsilon
from .trainer import TrainFn, TrainPlan

# Each statistical check fails a correct path with this probability. The sampling and
# noise are secret by design (not seeded), so a false alarm cannot be replayed away;
# at 1e-3, with four such tests per bank and audit, a correct path failed a CI run.
# The bugs these checks exist for (no noise, fixed-size batches, no clipping) sit far
# outside even the 1e-6 bands.
FALSE_ALARM = 1e-6
CANARY_FEATURES = 256
CANARY_ROWS = 64
CANARY_VALUE = 1e4
POISSON_ROWS = 2000
POISSON_BATCH = 100
POISSON_EPOCHS = 3
NOISE_REPEATS = 4
PLAN_TOLERANCE = 0.05


def _zero_gradient_rows(n_rows: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose gradient is exactly 0 for a zero-initialized logistic model.

    Features 0 make every weight gradient 0; a soft label of 0.5 equals sigmoid(0), so
    the bias gradient is 0 too. Whatever moves the model is then the mechanism's noise.
    """
    return (np.zeros((n_rows, n_features), dtype=np.float32),
            np.full(n_rows, 0.5, dtype=np.float32))


def _zero_model(n_features: int) -> torch.nn.Module:
    model = build_model(ModelSpec("logistic", n_features, (), 0.5))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    return model


def _one_step_update(train_fn: TrainFn, features: np.ndarray, labels: np.ndarray,
                     noise_multiplier: float, max_grad_norm: float, seed: int) -> np.ndarray:
    """Parameter change of one full-batch DP step (q = 1) at learning rate 1, no momentum."""
    model = _zero_model(features.shape[1])
    plan = TrainPlan(1, len(labels), 1.0, 0.0, max_grad_norm)
    train_fn(model, features, labels, plan, DPSchedule(1.0, 1, noise_multiplier), seed)
    return np.concatenate([a.ravel() for a in model_arrays(model).values()]).astype(np.float64)


def check_clipping(train_fn: TrainFn, noise_multiplier: float, max_grad_norm: float,
                   seed: int = 0) -> dict[str, Any]:
    """A record's influence on one step is at most C: the DP sensitivity holds.

    Privacy meaning: without clipping one record can move the model arbitrarily far,
    and no amount of noise calibrated to C bounds its privacy loss.
    """
    features, labels = _zero_gradient_rows(CANARY_ROWS, CANARY_FEATURES)
    features[0, 0], labels[0] = CANARY_VALUE, 1.0  # gradient -CANARY_VALUE/2 on weight 0
    update = _one_step_update(train_fn, features, labels, noise_multiplier, max_grad_norm, seed)
    contribution = update[0] * CANARY_ROWS / max_grad_norm  # in units of C; noise is σ·N(0,1)
    raw = CANARY_VALUE / 2 / max_grad_norm
    slack = norm.isf(FALSE_ALARM / 2) * max(noise_multiplier, 0.0)
    passed = abs(contribution - 1.0) <= slack + 1e-3
    return _result("clipping", passed, measured=contribution, expected=1.0, tolerance=slack,
                   detail=f"canary gradient norm {raw:.0f}·C; its step contribution must be "
                          f"1·C ± {slack:.2f} (noise), measured {contribution:.3g}·C")


def check_noise(train_fn: TrainFn, noise_multiplier: float, max_grad_norm: float,
                seed: int = 0) -> dict[str, Any]:
    """The Gaussian noise of each step has std noise_multiplier × C (per expected batch).

    Privacy meaning: ε is computed for this noise; less noise than configured means
    the real ε is larger than reported (none at all means no DP).
    """
    features, labels = _zero_gradient_rows(CANARY_ROWS, CANARY_FEATURES)
    samples = np.concatenate([
        _one_step_update(train_fn, features, labels, noise_multiplier, max_grad_norm, seed + r)
        for r in range(NOISE_REPEATS)]) * CANARY_ROWS / max_grad_norm
    measured = float(np.sqrt(np.mean(samples ** 2)))
    n = len(samples)
    low = math.sqrt(chi2.ppf(FALSE_ALARM / 2, n) / n) * noise_multiplier
    high = math.sqrt(chi2.isf(FALSE_ALARM / 2, n) / n) * noise_multiplier
    passed = noise_multiplier > 0 and low <= measured <= high
    detail = (f"configured σ={noise_multiplier:.4g}; measured {measured:.4g} from {n} noise "
              f"coordinates (accept [{low:.4g}, {high:.4g}])")
    if noise_multiplier <= 0:
        detail = "noise multiplier is 0: the mechanism adds no noise, so there is no DP"
    return _result("noise", passed, measured=measured, expected=noise_multiplier,
                   tolerance=[low, high], detail=detail)


def _batch_sizes(train_fn: TrainFn, noise_multiplier: float, max_grad_norm: float,
                 seed: int) -> tuple[np.ndarray, list]:
    """Sizes of the batches the model saw during one Poisson-sampled DP phase, and its history."""
    features, labels = _zero_gradient_rows(POISSON_ROWS, 8)
    model = _zero_model(8)
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
    plan = TrainPlan(POISSON_EPOCHS, POISSON_BATCH, 0.1, 0.0, max_grad_norm)
    per_epoch = steps_per_epoch(POISSON_ROWS, POISSON_BATCH)
    schedule = DPSchedule(1 / per_epoch, POISSON_EPOCHS * per_epoch, max(noise_multiplier, 1e-6))
    try:
        history = train_fn(model, features, labels, plan, schedule, seed)
    finally:
        handle.remove()
    return np.asarray(sizes, dtype=np.float64), history


def check_poisson(train_fn: TrainFn, noise_multiplier: float, max_grad_norm: float,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Batches are Poisson samples (size ~ Binomial(n, q)), recorded, and not seed-determined.

    Privacy meaning: the accountants' amplification by sampling assumes each record is
    in each batch independently with probability q *and that nobody knows which
    batches it was in*; shuffled fixed-size batches, or batches recomputable from
    the public run config (same seed, same batches), do not get that amplification,
    so the reported ε would be too small.
    """
    first, history = _batch_sizes(train_fn, noise_multiplier, max_grad_norm, seed)
    second, _ = _batch_sizes(train_fn, noise_multiplier, max_grad_norm, seed)
    rate = 1 / steps_per_epoch(POISSON_ROWS, POISSON_BATCH)
    repeated = len(first) == len(second) and bool(np.array_equal(first, second))
    secrecy = _result(
        "sampling_secret", not repeated, measured=repeated, expected=False, tolerance=None,
        detail=("two runs with the same seed drew identical batches: Poisson sampling is "
                "seeded from the public run config, so anyone can recompute which records "
                "each step used and the subsampling amplification behind ε does not hold")
        if repeated else "two runs with the same seed drew different batches (sampling "
                         "randomness is not derived from the public seed)")
    return [_poisson_verdict(first, rate, history), secrecy]


def _poisson_verdict(sizes: np.ndarray, rate: float, history: list) -> dict[str, Any]:
    mean, var = POISSON_ROWS * rate, POISSON_ROWS * rate * (1 - rate)
    k = len(sizes)
    z = norm.isf(FALSE_ALARM / 2)
    mean_ok = k > 1 and abs(sizes.mean() - mean) <= z * math.sqrt(var / k)
    ratio = float(sizes.var(ddof=1) / var) if k > 1 else 0.0
    low, high = (chi2.ppf(FALSE_ALARM / 2, k - 1) / (k - 1),
                 chi2.isf(FALSE_ALARM / 2, k - 1) / (k - 1)) if k > 1 else (1.0, 1.0)
    recorded_steps = sum(int(s) for _, _, s in history)
    recorded_ok = (recorded_steps == k and bool(history)
                   and all(abs(q - rate) < 1e-9 for _, q, _ in history))
    passed = bool(mean_ok and low <= ratio <= high and recorded_ok)
    detail = (f"{k} batches, mean size {sizes.mean() if k else 0:.1f} (Binomial mean {mean:.1f}),"
              f" variance ratio {ratio:.2f} (accept [{low:.2f}, {high:.2f}]); accountant "
              f"recorded {recorded_steps} steps at q={history[0][1] if history else 0:.4g}")
    return _result("poisson_sampling", passed, measured=ratio, expected=1.0,
                   tolerance=[low, high], detail=detail)


def check_training_path(train_fn: TrainFn, noise_multiplier: float, max_grad_norm: float,
                        seed: int = 0) -> list[dict[str, Any]]:
    """Clipping, noise scale and Poisson sampling of ``train_fn`` at the bank's σ and C."""
    return [check_clipping(train_fn, noise_multiplier, max_grad_norm, seed),
            check_noise(train_fn, noise_multiplier, max_grad_norm, seed),
            *check_poisson(train_fn, noise_multiplier, max_grad_norm, seed)]


def check_accounting(spec: dict[str, Any], config: dict[str, Any], n_train: int
                     ) -> list[dict[str, Any]]:
    """ε reported per round and per run equals the composition of every step of the run.

    Privacy meaning: an accountant reset between rounds (a fresh PrivacyEngine each
    round) reports one round's ε while the bank spent all rounds' ε.
    """
    phases = spec.get("phases", [])
    return [_cumulative_check(phases, spec["delta"]), _reported_check(spec, phases),
            _schedule_check(phases, config, n_train), _plan_check(spec, phases, config, n_train)]


def _cumulative_check(phases: list[dict], delta: float) -> dict[str, Any]:
    worst, where = 0.0, None
    for index, phase in enumerate(phases):
        history = tuple((p["noise_multiplier"], p["sample_rate"], p["steps"]) for p in
                        phases[: index + 1])
        expected = cached_epsilon(history, delta,
                                  tuple(phase.get("accountants") or [phase.get("accountant")
                                                                     or "rdp"]))
        error = _relative(phase.get("epsilon"), expected)
        if error > worst:
            worst, where = error, (phase, expected)
    passed = bool(phases) and worst <= 1e-3
    detail = f"{len(phases)} ledger spends; each ε equals the composition of all steps so far"
    if where is not None and not passed:
        phase, expected = where
        detail = (f"round {phase['round']} ({phase['phase']}) reports ε={phase['epsilon']:.4g} "
                  f"but all steps so far compose to {expected:.4g}: the accountant was reset "
                  f"or misfed between rounds")
    if not phases:
        detail = "no privacy_spend entries for this run in the ledger"
    return _result("accounting_cumulative", passed, measured=worst, expected=0.0,
                   tolerance=1e-3, detail=detail)


def _reported_check(spec: dict[str, Any], phases: list[dict]) -> dict[str, Any]:
    history = tuple((p["noise_multiplier"], p["sample_rate"], p["steps"]) for p in phases)
    accountant = spec.get("run_accountant") or "rdp"
    expected = cached_epsilon(history, spec["delta"], accountant) if history else None
    reported = spec.get("epsilon_reported")
    error = _relative(reported, expected) if expected is not None else math.inf
    passed = error <= 1e-3
    return _result("accounting_reported", passed, measured=reported, expected=expected,
                   tolerance=1e-3,
                   detail=f"metrics.json ε {_fmt(reported)} vs {accountant.upper()} composition "
                          f"of the ledger's {len(phases)} spends {_fmt(expected)}")


def _schedule_check(phases: list[dict], config: dict[str, Any], n_train: int) -> dict[str, Any]:
    per_epoch = TrainPlan.from_recorded_config(config).steps_per_epoch(n_train)
    bad = []
    for phase in phases:
        epochs = int(config.get("local-epochs" if phase["phase"] == "train"
                                else "personalization-epochs", 1))
        if (int(phase["steps"]) != epochs * per_epoch
                or abs(float(phase["sample_rate"]) - 1 / per_epoch) > 1e-9):
            bad.append(f"round {phase['round']} {phase['phase']}: {phase['steps']} steps at "
                       f"q={phase['sample_rate']:.4g}")
    detail = (f"every phase: epochs × {per_epoch} steps at q=1/{per_epoch} for n={n_train}"
              if not bad else "expected epochs × " + f"{per_epoch} steps at q=1/{per_epoch}; "
              + "; ".join(bad))
    return _result("accounting_schedule", bool(phases) and not bad, measured=len(bad),
                   expected=0, tolerance=0, detail=detail)


def _plan_check(spec: dict[str, Any], phases: list[dict], config: dict[str, Any],
                n_train: int) -> dict[str, Any]:
    sigmas = [p.get("noise_multiplier") for p in phases]
    if not phases or not all(isinstance(s, float | int) for s in sigmas):
        return _result("noise_multiplier_planned", False, measured=spec.get("noise_multiplier"),
                       expected=None, tolerance=None,
                       detail="no noise multiplier recorded for the run")
    if min(sigmas) <= 0:
        return _result("noise_multiplier_planned", False, measured=min(sigmas), expected=None,
                       tolerance=None, detail="noise multiplier 0 recorded: no DP")
    sigma = float(sigmas[0])
    if config.get("privacy-budget-scope", "run") != "run":
        return _result("noise_multiplier_planned", True, measured=sigma, expected=None,
                       tolerance=None, detail="dataset-scope budget: plan depends on prior runs")
    personalization = (int(config.get("personalization-epochs", 0))
                       if config.get("personalization", "none") != "none" else 0)
    per_epoch = TrainPlan.from_recorded_config(config).steps_per_epoch(n_train)
    steps = (int(config["num-server-rounds"]) * int(config["local-epochs"]) + personalization
             ) * per_epoch
    target, delta = float(config["target-epsilon"]), float(config["target-delta"])
    accountant = config.get("accountant", "rdp")
    planned = cached_epsilon(((sigma, 1 / per_epoch, steps),), delta, accountant)
    # calibrate_noise_multiplier stops within 0.01 of the target (or at σ resolution 1e-4)
    passed = target - PLAN_TOLERANCE <= planned <= target * (1 + 1e-9)
    detail = (f"ledger σ={sigma:.6g} over the planned {steps} steps at q=1/{per_epoch} gives "
              f"ε={planned:.4g}; the plan must meet target ε={target:g} "
              f"(within {PLAN_TOLERANCE})")
    # The run's spends must compose within the target: a round charged twice (a resumed
    # run repeating it) must have been paid for by re-planning σ upward for the rest.
    composed = cached_epsilon(tuple((p["noise_multiplier"], p["sample_rate"], p["steps"])
                                    for p in phases), delta, accountant)
    passed = passed and min(sigmas) >= sigma * (1 - 1e-9) and composed <= target * (1 + 1e-9)
    if len(set(sigmas)) > 1 or composed > target * (1 + 1e-9):
        detail += (f"; the run's {len(phases)} spends (σ {min(sigmas):.6g}-{max(sigmas):.6g}, "
                   f"re-planned after a resume) compose to ε={composed:.4g}, target {target:g}")
    return _result("noise_multiplier_planned", passed, measured=planned, expected=target,
                   tolerance=PLAN_TOLERANCE, detail=detail)


def _relative(value: float | None, expected: float | None) -> float:
    if value is None or expected is None:
        return math.inf
    if math.isinf(expected) or math.isinf(value):
        return 0.0 if value == expected else math.inf
    return abs(float(value) - expected) / max(abs(expected), 1e-12)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4g}"


def _result(name: str, passed: bool, *, measured: Any, expected: Any, tolerance: Any,
            detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "measured": _plain(measured),
            "expected": _plain(expected), "tolerance": _plain(tolerance), "detail": detail}


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
