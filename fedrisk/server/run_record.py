"""What the coordinator records of a run: per-round and per-bank metrics, never rows.

Under DP every evaluation figure is computed here from the banks' noisy score
histograms (post-processing of accounted releases); the consortium figures pool the
banks' signed noisy counts first and clip negative counts only after pooling.

The final model's PD calibration map is fitted here too, on the pooled held-out
histograms of the last evaluation (:mod:`fedrisk.models.calibration`; post-processing,
no extra ε), and stored in the model file, so the consortium model's PDs are calibrated
as loaded.

Writes ``metrics.json`` (schema in the README), the final model
(``model.safetensors``) and ``training.png`` (consortium AUC and max ε per round).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flwr.app import Error  # noqa: E402
from flwr.common import parameters_to_ndarrays  # noqa: E402
from flwr.common.logger import log  # noqa: E402

from fedrisk.config import RunConfig  # noqa: E402
from fedrisk.models import ModelSpec, save_model  # noqa: E402
from fedrisk.models.calibration import (  # noqa: E402
    PlattMap,
    fit_histogram_calibration,
    histogram_calibration_facts,
)
from fedrisk.models.histograms import (  # noqa: E402
    FINE_GRID,
    ScoreGrid,
    eval_grid,
    grade_error_metrics,
    grade_errors_from,
    histogram_metrics,
    histograms_from,
)
from fedrisk.privacy.accounting import (  # noqa: E402
    compose_epsilon,
    weighted_mean_noise_multiplier,
)

SCHEMA_VERSION = 1
FIT_KEYS = ("n_train", "epsilon", "epsilon_lifetime", "delta", "noise_multiplier",
            "sample_rate", "steps", "train_loss", "ledger_head")
# Without DP: exact metrics as the banks report them.
EVAL_KEYS = ("n_test", "auc", "brier", "ks", "personalized_auc", "personalized_brier",
             "epsilon", "epsilon_lifetime", "grade_spearman", "grade_accuracy",
             "grade_within_one", "ledger_id", "ledger_entries", "ledger_head")
# Under DP: what is taken as reported besides the noisy histograms (ε of training and of
# evaluation, the evaluation noise; n_test only from a bank whose policy makes sizes public).
PRIVATE_EVAL_KEYS = ("n_test", "epsilon", "epsilon_lifetime", "epsilon_eval",
                     "epsilon_eval_lifetime", "eval_noise_multiplier", "ledger_id",
                     "ledger_entries", "ledger_head")


class RunRecorder:
    """Collects what banks report each round and turns it into the run's outputs."""

    def __init__(self, config: RunConfig, run_id: int, run_facts: Mapping[str, object]) -> None:
        """Start recording; ``run_facts`` are extra config entries (e.g. secure aggregation)."""
        self.config = config
        self.run_id = run_id
        self.run_facts = dict(run_facts)
        self.rounds: list[dict] = []
        self.banks: dict[str, dict] = {}
        self._round_start = time.monotonic()
        self._failures: dict[int, list[str]] = {}
        self._trained: dict[int, int] = {}
        self._received: dict[int, list[str]] = {}
        self.n_grades = 0  # grade levels of the contract, as the banks report it
        self.prior_default_rate = 0.5  # the contract's public prior, as the banks report it
        self.resumes: list[dict] = []  # each resume: the checkpointed round it started from
        # Institution-level DP: per aggregated round, (effective noise multiplier, rate, 1).
        self._institution_history: list[tuple[float, float, int]] = []
        # The last evaluation's pooled global-model histograms, their grid and noise sd.
        self._last_evaluation: tuple[np.ndarray, ScoreGrid, float] | None = None

    def state(self) -> dict:
        """What a checkpoint keeps of the record: closed rounds and every bank's reports."""
        return {"rounds": self.rounds, "banks": self.banks, "n_grades": self.n_grades,
                "prior_default_rate": self.prior_default_rate, "resumes": self.resumes,
                "institution_history": self._institution_history}

    def restore(self, state: dict, from_round: int, flower_run_id: int | str) -> None:
        """Continue the record of a checkpointed run after its round ``from_round``.

        Rounds after ``from_round`` (closed after the checkpoint was written, then lost
        with the crash) are dropped: they run again, so each round appears once.
        """
        self.rounds = [r for r in state["rounds"] if int(r["round"]) <= from_round]
        self.banks = {str(k): dict(v) for k, v in state["banks"].items()}
        self.n_grades = int(state["n_grades"])
        self.prior_default_rate = float(state["prior_default_rate"])
        self.resumes = [*state.get("resumes", []),
                        {"from_round": from_round, "flower_run_id": str(flower_run_id)}]
        self._institution_history = [tuple(step) for step in
                                     state.get("institution_history", [])]

    def on_fit(self, server_round: int, results: list, failures: list) -> None:
        """Record each bank's training scalars (ε, counts) and each failure's reason."""
        for _, res in results:
            metrics = dict(res.metrics)
            self.n_grades = int(metrics.get("n_grades", self.n_grades))
            self.prior_default_rate = float(metrics.get("prior_default_rate",
                                                        self.prior_default_rate))
            bank = self.banks.setdefault(str(metrics["bank_id"]), {"rounds_joined": 0})
            bank["rounds_joined"] += 1
            bank.update({k: metrics[k] for k in FIT_KEYS if k in metrics})
        self._trained[server_round] = len(results)
        # Fingerprints of exactly what the strategy was handed; under SecAgg+ each
        # is the masked-sum aggregate, never one bank's update (tests compare these
        # with the banks' own ledgers).
        self._received[server_round] = sorted({_sha256(res.parameters.tensors)
                                                for _, res in results})
        self._failures[server_round] = [_failure_reason(f) for f in failures]
        if self.config.institution_level_dp and results and not failures:
            # Flower's DP wrapper noised this round's aggregate (it skips rounds with failures).
            sizes = [float(res.num_examples) for _, res in results]
            self._institution_history.append((weighted_mean_noise_multiplier(
                self.config.institution_noise_multiplier, self.config.min_banks, sizes),
                self._institution_sample_rate(), 1))
        for reason in self._failures[server_round]:
            log(30, "round %s: a bank did not contribute: %s", server_round, reason)

    def on_evaluate(self, server_round: int, results: list, failures: list) -> None:
        """Read banks' score histograms into per-bank and consortium metrics; close the round.

        Under DP the histograms are noisy releases: every figure (per bank and pooled) is
        computed here from them, and nothing else of a bank's evaluation is trusted or
        needed. Without DP banks report exact metrics and the pooled AUC comes from their
        exact histograms. No results and no failures: the round was not evaluated.
        """
        grid = self._grid()
        pooled = {"hist": np.zeros((2, grid.bins)), "personalized_hist": np.zeros((2, grid.bins))}
        noise_variance, brier_sum, n_total = 0.0, 0.0, 0
        for _, res in results:
            metrics = dict(res.metrics)
            bank = self.banks.setdefault(str(metrics["bank_id"]), {"rounds_joined": 0})
            for prefix, counts in pooled.items():
                histograms = histograms_from(metrics, prefix)
                if histograms is not None and len(histograms[0]) == grid.bins:
                    counts += histograms
            if self.config.dp:
                bank.update(_private_bank_metrics(metrics, grid))
                noise_variance += float(metrics.get("eval_noise_multiplier", 0.0)) ** 2
            else:
                bank.update(_exact_bank_metrics(metrics))
                brier_sum += float(metrics["brier"]) * int(metrics["n_test"])
                n_total += int(metrics["n_test"])
        self._close_round(server_round, grid, pooled, math.sqrt(noise_variance),
                          brier_sum / n_total if n_total else None, bool(results or failures))

    def _grid(self) -> ScoreGrid:
        """The histograms' grid: the public DP grid around the contract's prior, or the fine one."""
        if not self.config.dp:
            return FINE_GRID
        return eval_grid(self.prior_default_rate, self.config.eval_bins,
                         self.config.eval_logit_low, self.config.eval_logit_high)

    def _close_round(self, server_round: int, grid: ScoreGrid, pooled: dict[str, np.ndarray],
                     noise_sd: float, exact_brier: float | None, evaluated: bool) -> None:
        consortium = histogram_metrics(*pooled["hist"], grid, noise_sd) if evaluated else {}
        if evaluated and pooled["hist"].any():  # some bank released histograms
            self._last_evaluation = (pooled["hist"].copy(), grid, noise_sd)
        now = time.monotonic()
        record = {
            "round": server_round,
            "auc": consortium.get("auc"),
            "auc_noise_sd": consortium.get("auc_noise_sd"),
            "brier": exact_brier if exact_brier is not None else consortium.get("brier"),
            "evaluated": evaluated,
            "epsilon_max": self.epsilon_max(),
            "epsilon_eval_max": self.epsilon_eval_max(),
            "seconds": round(now - self._round_start, 3),
            "banks_trained": self._trained.get(server_round, 0),
            "banks_failed": len(self._failures.get(server_round, [])),
            "failures": self._failures.get(server_round, []),
            "received_update_sha256": self._received.get(server_round, []),
        }
        if pooled["personalized_hist"].any():
            personal = histogram_metrics(*pooled["personalized_hist"], grid, noise_sd)
            record |= {"personalized_auc": personal["auc"],
                       "personalized_auc_noise_sd": personal["auc_noise_sd"]}
        self._round_start = now
        self.rounds.append(record)
        log(20, "round %d/%d  %s  %s  (%.1fs)", server_round, self.config.num_server_rounds,
            _auc_text(record, self.config.dp), self._epsilon_text(record), record["seconds"])

    def _epsilon_text(self, record: dict) -> str:
        if not self.config.dp:
            return "non-private"
        if not self.config.record_level_dp:
            return "institution-level DP (ε after the last round)"
        if record["epsilon_max"] is None:
            return "no bank trained"
        text = f"max ε {record['epsilon_max']:.3f}"
        if record["epsilon_eval_max"] is not None:
            text += f"  max ε eval {record['epsilon_eval_max']:.3f}"
        return text

    def epsilon_max(self) -> float | None:
        """Largest ε any bank has spent in this run so far (None without DP)."""
        values = [b["epsilon"] for b in self.banks.values() if "epsilon" in b]
        return max(values) if values else None

    def epsilon_eval_max(self) -> float | None:
        """Largest evaluation ε any bank has spent in this run so far (None without DP)."""
        values = [b["epsilon_eval"] for b in self.banks.values() if "epsilon_eval" in b]
        return max(values) if values else None

    def calibration(self) -> PlattMap | None:
        """The final model's PD calibration map, fitted on the last evaluation's pooled histograms.

        Post-processing of the banks' released (noisy under DP) held-out histograms: no
        extra ε. None with ``pd-calibration = "none"``, without an evaluation, or when the
        counts cannot support a fit.
        """
        if self.config.pd_calibration == "none" or self._last_evaluation is None:
            return None
        pooled, grid, noise_sd = self._last_evaluation
        fitted = fit_histogram_calibration(*pooled, grid, self.config.pd_calibration, noise_sd)
        if fitted is None:
            log(30, "PD calibration: the pooled held-out histograms cannot support a fit; "
                "the model is stored uncalibrated")
        return fitted

    def _institution_sample_rate(self) -> float:
        """Fraction of the banks sampled per round (Flower samples at least min-banks)."""
        known = max(len(self.banks), self.config.min_banks)
        return min(1.0, max(self.config.fraction_train, self.config.min_banks / known))

    def institution_dp(self) -> dict | None:
        """The institution-level guarantee of the released model (None without it).

        ε by Opacus' RDP accountant over the rounds whose aggregate was noised, each a
        Gaussian mechanism on the weighted mean update with the effective noise multiplier
        of :func:`weighted_mean_noise_multiplier`, at the run's δ. Holds only if the
        coordinator added the noise (it adds it, to a sum it sees unnoised).
        """
        if not self.config.institution_level_dp:
            return None
        history = self._institution_history
        return {
            "epsilon": compose_epsilon(history, self.config.target_delta, "rdp"),
            "delta": self.config.target_delta, "accountant": "rdp",
            "noise_multiplier": self.config.institution_noise_multiplier,
            "effective_noise_multiplier": min((s for s, _, _ in history), default=None),
            "clipping_norm": self.config.institution_clipping_norm,
            "rounds": len(history), "rounds_planned": self.config.num_server_rounds,
            "sample_rate": self._institution_sample_rate(),
            "sampled_banks": self.config.min_banks,
            "unit": "one bank (all of its rows)",
            "trust": "holds only if the coordinator adds the noise: it sees the unnoised "
                     "aggregate; each bank enforces only its own clipping",
        }

    def write(self, parameters, output_dir: Path) -> dict:
        """Write metrics.json, the final model and the training plot; return the metrics."""
        output_dir.mkdir(parents=True, exist_ok=True)
        # FedAvg's weighted mean comes back as float64; the model is float32.
        arrays = [a.astype(np.float32) for a in parameters_to_ndarrays(parameters)]
        spec = ModelSpec(self.config.model, int(arrays[0].shape[1]), self.config.hidden_layers,
                         self.prior_default_rate, self.n_grades)
        names = _parameter_names(spec)
        calibration = self.calibration()
        save_model(output_dir / "model.safetensors", spec, dict(zip(names, arrays, strict=True)),
                   calibration=calibration)
        metrics = self.metrics(spec, calibration)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json))
        self._plot(output_dir / "training.png")
        return metrics

    def metrics(self, spec: ModelSpec, calibration: PlattMap | None = None) -> dict:
        """The metrics.json document (schema documented in the README)."""
        last = self.rounds[-1] if self.rounds else {}
        banks = []
        for bank_id, bank in sorted(self.banks.items(), key=lambda item: natural_key(item[0])):
            # train_loss is kept for the schema but never sent: it is not a DP statistic.
            entry = {"id": bank_id, "train_loss": None, **bank}
            if self.config.dp and "n_train" in bank:
                entry["delta_below_1_over_n"] = self.config.target_delta < 1 / bank["n_train"]
            banks.append(entry)
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": str(self.run_id),
            "privacy": _privacy_label(self.config),
            "config": {**self.config.to_run_config(), **self.run_facts},
            "model": {"file": "model.safetensors", "spec": spec.to_dict()},
            "rounds": self.rounds,
            "banks": banks,
            "final": {"auc": last.get("auc"), "brier": last.get("brier"),
                      "epsilon_max": self.epsilon_max(),
                      "auc_noise_sd": last.get("auc_noise_sd"),
                      "epsilon_eval_max": self.epsilon_eval_max(),
                      "personalized_auc": last.get("personalized_auc"),
                      "personalized_auc_noise_sd": last.get("personalized_auc_noise_sd"),
                      **self._calibration_facts(calibration)},
            "baselines": {},
            "resumed_from_round": self.resumes[-1]["from_round"] if self.resumes else None,
            "resumes": self.resumes,
            "institution_dp": self.institution_dp(),
        }

    def _calibration_facts(self, calibration: PlattMap | None) -> dict:
        """``final``'s mean PD, default rate and calibration slope of the stored model.

        Read off the last evaluation's pooled held-out histograms (noisy under DP), with the
        stored calibration applied, and the map itself (``pd_calibration``).
        """
        if self._last_evaluation is None:
            return {"mean_pd": None, "observed_default_rate": None, "calibration_slope": None,
                    "pd_calibration": None}
        pooled, grid, _ = self._last_evaluation
        raw = histogram_calibration_facts(*pooled, grid)
        stored = histogram_calibration_facts(*pooled, grid, calibration)
        return {**stored, "pd_calibration": None if calibration is None else {
            "method": calibration.fitted_on.get("method", self.config.pd_calibration),
            "slope": calibration.slope,
            "intercept": calibration.intercept, "mean_pd_uncalibrated": raw["mean_pd"],
            "calibration_slope_uncalibrated": raw["calibration_slope"]}}

    def _plot(self, path: Path) -> None:
        rounds = [r["round"] for r in self.rounds]
        evaluated = [r for r in self.rounds if r["auc"] is not None]
        figure, auc_axis = plt.subplots(figsize=(6, 3.5))
        auc_axis.errorbar([r["round"] for r in evaluated], [r["auc"] for r in evaluated],
                          yerr=[r["auc_noise_sd"] or 0.0 for r in evaluated], fmt="o-",
                          color="tab:blue", capsize=3)
        auc_axis.set_xlabel("round")
        auc_axis.set_ylabel("consortium AUC", color="tab:blue")
        if self.config.dp:
            eps_axis = auc_axis.twinx()
            eps_axis.plot(rounds, [r["epsilon_max"] for r in self.rounds], "s--", color="tab:red")
            eps_axis.set_ylabel("max ε spent", color="tab:red")
        auc_axis.set_title("fedrisk: " + ("DP" if self.config.dp else "non-private") + " training")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)


def _privacy_label(config: RunConfig) -> str:
    if not config.dp:
        return "NON-PRIVATE baseline"
    return {"record": "DP-SGD (record-level)",
            "institution": "institution-level DP (client-side clipping, coordinator noise)",
            "both": "DP-SGD (record-level) + institution-level DP"}[config.dp_level]


def natural_key(name: str) -> tuple:
    """Sort key that orders ``bank-2`` before ``bank-10`` (numbers compare as numbers)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name) if part)


def _exact_bank_metrics(metrics: dict) -> dict:
    """A bank's exact evaluation (non-private run), with per-level grade accuracy grouped."""
    bank = {k: metrics[k] for k in EVAL_KEYS if k in metrics}
    by_level = {k[len("grade_acc_"):]: v for k, v in metrics.items()
                if k.startswith("grade_acc_")}
    if by_level:
        bank["grade_accuracy_by_level"] = dict(sorted(by_level.items()))
    return bank


def _private_bank_metrics(metrics: dict, grid: ScoreGrid) -> dict:
    """A bank's figures computed from its noisy releases (post-processing, no extra ε).

    ``auc_noise_sd`` is the noise's standard deviation in this bank's AUC. Per-level grade
    accuracy and the grade rank correlation are not released under DP (``None``).
    """
    sigma = float(metrics.get("eval_noise_multiplier", 0.0))
    bank = {k: metrics[k] for k in PRIVATE_EVAL_KEYS if k in metrics}
    histograms = histograms_from(metrics)
    if histograms is not None and len(histograms[0]) == grid.bins:
        released = histogram_metrics(*histograms, grid, sigma)
        bank |= {k: released[k] for k in ("auc", "auc_noise_sd", "brier", "ks")}
        bank.setdefault("n_test", released["n"])
    personal = histograms_from(metrics, "personalized_hist")
    if personal is not None and len(personal[0]) == grid.bins:
        released = histogram_metrics(*personal, grid, sigma)
        bank |= {"personalized_auc": released["auc"], "personalized_brier": released["brier"],
                 "personalized_auc_noise_sd": released["auc_noise_sd"]}
    errors = grade_errors_from(metrics)
    if errors is not None:
        bank |= grade_error_metrics(errors) | {"grade_spearman": None,
                                               "grade_accuracy_by_level": None}
    return bank


def _auc_text(record: dict, dp: bool) -> str:
    if not record["evaluated"]:
        return "not evaluated (eval-every)"
    if record["auc"] is None or math.isnan(record["auc"]):
        return "consortium AUC -"
    noise = f" ± {record['auc_noise_sd']:.3f}" if dp and record["auc_noise_sd"] else ""
    return f"consortium AUC {record['auc']:.4f}{noise}"


def _sha256(tensors: list[bytes]) -> str:
    return hashlib.sha256(b"".join(tensors)).hexdigest()


def _parameter_names(spec: ModelSpec) -> list[str]:
    from fedrisk.models import build_model

    return list(build_model(spec).state_dict())


def _failure_reason(failure: object) -> str:
    if isinstance(failure, BaseException) and failure.args and isinstance(failure.args[0],
                                                                          Error):
        return failure.args[0].reason  # a bank's error reply: its (fixed) text
    if isinstance(failure, BaseException):
        return str(failure).strip().splitlines()[-1][:300] if str(failure).strip() else repr(
            failure)
    _, res = failure
    return f"status {res.status.code.name}: {res.status.message}"


def _json(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
