"""Exact evaluation of a finished simulation, offline, for studies on public data.

Under DP a run's metrics.json holds evaluation figures read off noisy histograms. A
study of accuracy against privacy (the benchmarks) needs the exact figures too: these
functions recompute them from the run directory alone, with every simulated bank's own
held-out split (its policy's fraction and seed, as the bank made it), the saved global
model and each bank's personalized model. Nothing here is a bank's release; it reads
every bank's rows and is only possible in a simulation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from fedrisk.data import Contract, read_table, stratified_split
from fedrisk.models import load_model
from fedrisk.models.calibration import PlattMap, fit_platt
from fedrisk.privacy.dpsgd import predict_logits
from fedrisk.privacy.policy import BankPolicy

MANIFEST = "banks.json"


@dataclass(frozen=True)
class HeldOut:
    """One simulated bank's held-out split, encoded (features, 0/1 labels)."""

    features: np.ndarray
    labels: np.ndarray


def held_out_splits(run_dir: Path) -> dict[str, HeldOut]:
    """Every simulated bank's held-out split, exactly as the bank split its own table."""
    data_dir = Path(run_dir) / "data"
    manifest = json.loads((data_dir / MANIFEST).read_text())
    contract = Contract.load(data_dir / manifest["contract"])
    splits = {}
    for entry in manifest["banks"]:
        policy = (BankPolicy.load(data_dir / entry["policy"]) if entry.get("policy")
                  else BankPolicy.simulation_default())
        table = read_table(data_dir / entry["file"])
        _, test = stratified_split(table, contract, policy.test_fraction, policy.split_seed)
        splits[entry["id"]] = HeldOut(contract.encode(test), contract.labels(test))
    return splits


def exact_evaluation(run_dir: Path) -> dict:
    """Exact figures of a finished run: consortium (pooled rows) and per bank.

    Returns ``auc`` (global model, all banks' held-out rows pooled), ``personalized_auc``
    (each bank's personalized model on its own rows, pooled; None if none was kept),
    ``calibration`` (:func:`exact_calibration` of the global model on the pooled rows) and
    ``banks.<id>`` with ``auc`` and ``personalized_auc``.
    """
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    _, model = load_model(run_dir / metrics["model"]["file"])
    scores: dict[str, list] = {"auc": [], "personalized_auc": []}
    banks = {}
    for bank_id, split in held_out_splits(run_dir).items():
        logits = predict_logits(model, split.features)
        scores["auc"].append((logits, split.labels))
        banks[bank_id] = {"auc": _auc(logits, split.labels), "personalized_auc": None}
        path = run_dir / "banks" / bank_id / "personalized" / f"{metrics['run_id']}.safetensors"
        if path.is_file():
            personal = predict_logits(load_model(path)[1], split.features)
            scores["personalized_auc"].append((personal, split.labels))
            banks[bank_id]["personalized_auc"] = _auc(personal, split.labels)
    pooled = {key: _auc(np.concatenate([s for s, _ in pairs]),
                        np.concatenate([y for _, y in pairs])) if pairs else None
              for key, pairs in scores.items()}
    logits = np.concatenate([s for s, _ in scores["auc"]])
    labels = np.concatenate([y for _, y in scores["auc"]])
    return {**pooled, "calibration": exact_calibration(logits, labels, model.calibration),
            "banks": banks}


def exact_calibration(logits: np.ndarray, labels: np.ndarray, calibration: PlattMap | None
                      ) -> dict[str, float | None]:
    """Mean PD, default rate and calibration slope on rows, with and without ``calibration``.

    ``logits`` are the model's as stored (its calibration applied); ``*_uncalibrated``
    undoes the stored map. ``calibration_slope``: slope of the logistic regression of the
    outcome on the logit (1: PDs neither too spread out nor too compressed).
    """
    raw = logits if calibration is None else (logits - calibration.intercept) / calibration.slope
    return {"observed_default_rate": float(labels.mean()),
            "mean_pd": float(expit(logits).mean()),
            "mean_pd_uncalibrated": float(expit(raw).mean()),
            "calibration_slope": fit_platt(logits, labels).slope,
            "calibration_slope_uncalibrated": fit_platt(raw, labels).slope}


def _auc(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(roc_auc_score(labels, logits)) if 0 < labels.sum() < len(labels) else float(
        "nan")
