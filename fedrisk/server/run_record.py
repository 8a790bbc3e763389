"""What the coordinator records of a run: per-round and per-bank metrics, never rows.

Writes ``metrics.json`` (schema in the README), the final model
(``model.safetensors``) and ``training.png`` (consortium AUC and max ε per round).
"""

from __future__ import annotations

import hashlib
import json
import math
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
from fedrisk.models.metrics import HISTOGRAM_BINS, histogram_auc  # noqa: E402

SCHEMA_VERSION = 1
FIT_KEYS = ("n_train", "epsilon", "epsilon_lifetime", "delta", "noise_multiplier",
            "sample_rate", "steps", "train_loss", "ledger_head")
EVAL_KEYS = ("n_test", "auc", "brier", "ks", "personalized_auc", "personalized_brier",
             "epsilon", "epsilon_lifetime", "grade_spearman", "grade_accuracy",
             "grade_within_one", "ledger_id", "ledger_entries", "ledger_head")


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
        for reason in self._failures[server_round]:
            log(30, "round %s: a bank did not contribute: %s", server_round, reason)

    def on_evaluate(self, server_round: int, results: list, failures: list) -> None:
        """Pool banks' score histograms into the consortium AUC and close the round."""
        positive = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        negative = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        brier_sum, n_total = 0.0, 0
        for _, res in results:
            metrics = dict(res.metrics)
            bank = self.banks.setdefault(str(metrics["bank_id"]), {"rounds_joined": 0})
            bank.update({k: metrics[k] for k in EVAL_KEYS if k in metrics})
            by_level = {k[len("grade_acc_"):]: v for k, v in metrics.items()
                        if k.startswith("grade_acc_")}
            if by_level:
                bank["grade_accuracy_by_level"] = dict(sorted(by_level.items()))
            positive += [int(metrics[f"hist_pos_{i:03d}"]) for i in range(HISTOGRAM_BINS)]
            negative += [int(metrics[f"hist_neg_{i:03d}"]) for i in range(HISTOGRAM_BINS)]
            brier_sum += float(metrics["brier"]) * int(metrics["n_test"])
            n_total += int(metrics["n_test"])
        now = time.monotonic()
        record = {
            "round": server_round,
            "auc": histogram_auc(positive, negative),
            "brier": brier_sum / max(n_total, 1),
            "epsilon_max": self.epsilon_max(),
            "seconds": round(now - self._round_start, 3),
            "banks_trained": self._trained.get(server_round, 0),
            "banks_failed": len(self._failures.get(server_round, [])),
            "failures": self._failures.get(server_round, []),
            "received_update_sha256": self._received.get(server_round, []),
        }
        self._round_start = now
        self.rounds.append(record)
        if not self.config.dp:
            eps = "non-private"
        elif record["epsilon_max"] is None:
            eps = "no bank trained"
        else:
            eps = f"max ε {record['epsilon_max']:.3f}"
        log(20, "round %d/%d  consortium AUC %.4f  %s  (%.1fs)", server_round,
            self.config.num_server_rounds, record["auc"], eps, record["seconds"])

    def epsilon_max(self) -> float | None:
        """Largest ε any bank has spent in this run so far (None without DP)."""
        values = [b["epsilon"] for b in self.banks.values() if "epsilon" in b]
        return max(values) if values else None

    def write(self, parameters, output_dir: Path) -> dict:
        """Write metrics.json, the final model and the training plot; return the metrics."""
        output_dir.mkdir(parents=True, exist_ok=True)
        # FedAvg's weighted mean comes back as float64; the model is float32.
        arrays = [a.astype(np.float32) for a in parameters_to_ndarrays(parameters)]
        spec = ModelSpec(self.config.model, int(arrays[0].shape[1]), self.config.hidden_layers,
                         self.prior_default_rate, self.n_grades)
        names = _parameter_names(spec)
        save_model(output_dir / "model.safetensors", spec, dict(zip(names, arrays, strict=True)))
        metrics = self.metrics(spec)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json))
        self._plot(output_dir / "training.png")
        return metrics

    def metrics(self, spec: ModelSpec) -> dict:
        """The metrics.json document (schema documented in the README)."""
        last = self.rounds[-1] if self.rounds else {}
        banks = []
        for bank_id, bank in sorted(self.banks.items()):
            # train_loss is kept for the schema but never sent: it is not a DP statistic.
            entry = {"id": bank_id, "train_loss": None, **bank}
            if self.config.dp and "n_train" in bank:
                entry["delta_below_1_over_n"] = self.config.target_delta < 1 / bank["n_train"]
            banks.append(entry)
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": str(self.run_id),
            "privacy": "DP-SGD (record-level)" if self.config.dp else "NON-PRIVATE baseline",
            "config": {**self.config.to_run_config(), **self.run_facts},
            "model": {"file": "model.safetensors", "spec": spec.to_dict()},
            "rounds": self.rounds,
            "banks": banks,
            "final": {"auc": last.get("auc"), "brier": last.get("brier"),
                      "epsilon_max": self.epsilon_max()},
            "baselines": {},
        }

    def _plot(self, path: Path) -> None:
        rounds = [r["round"] for r in self.rounds]
        figure, auc_axis = plt.subplots(figsize=(6, 3.5))
        auc_axis.plot(rounds, [r["auc"] for r in self.rounds], "o-", color="tab:blue")
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
