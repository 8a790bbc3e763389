"""Section 5: fairness of the final model across the contract's protected attributes.

Each bank computes, on its own held-out split, additive statistics per group
(counts, sums of predicted PD, approvals, and score histograms on the fixed logit
grid of :mod:`fedrisk.models.metrics`); the consortium adds them up across banks
and derives per-group AUC, calibration and approval rates. Groups smaller than
``MIN_GROUP`` rows at a bank are pooled into one "other" group before anything
leaves the bank, so no statistic describes a handful of people.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fedrisk.data import US_CENSUS_REGIONS, Contract
from fedrisk.data.values import canonical_strings
from fedrisk.models.metrics import HISTOGRAM_BINS, histogram_auc, score_histograms

MIN_GROUP = 20
MIN_CLASS_FOR_AUC = 5
AGE_BANDS = (18, 25, 35, 45, 55, 65)
OTHER = "other (small groups)"
THRESHOLD_RULE = ("approve when PD < the smallest risk-band edge at or above the contract's "
                  "prior default rate (or the prior itself when all edges are below it)")


def operating_threshold(contract: Contract) -> float:
    """The PD cut-off above which an applicant counts as declined in this audit.

    Documented rule: the smallest risk-band edge at or above the contract's public
    prior default rate (lending_club: 0.05, the second band edge), or the prior
    itself when every edge is below it (credit_data: 0.28). Approval = PD below it.
    """
    edges = [edge for edge in contract.risk_band_edges if edge >= contract.prior_default_rate]
    return float(min(edges)) if edges else float(contract.prior_default_rate)


def groupings(contract: Contract, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Group label of every row for each protected attribute (and derived views).

    Numeric attributes are banded (age: standard bands; others: four equal-width
    bands over the contract's bounds); US state codes are also grouped by census
    region.
    """
    views: dict[str, np.ndarray] = {}
    numeric = {f.name: f for f in contract.numeric}
    for column in contract.protected:
        if column not in table.columns:
            continue
        if column in numeric:
            views[f"{column} (band)"] = _bands(table[column], numeric[column], column)
            continue
        values = canonical_strings(table[column])
        labels = values.fillna("missing").to_numpy(dtype=object)
        present = set(values.dropna())
        if present and present <= set(US_CENSUS_REGIONS):
            views[f"{column} (census region)"] = np.array(
                [US_CENSUS_REGIONS.get(v, "missing") for v in labels], dtype=object)
        views[column] = labels
    return views


def _bands(column: pd.Series, feature: Any, name: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    if name.lower() == "age":
        edges = list(AGE_BANDS)
    else:
        edges = list(np.round(np.linspace(feature.lower, feature.upper, 5)[1:-1], 2))
        edges = [feature.lower, *edges]
    names = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    names.append(f"{edges[-1]:g}+")
    index = np.searchsorted(edges, values, side="right") - 1
    labels = np.array([names[max(i, 0)] for i in index], dtype=object)
    labels[np.isnan(values)] = "missing"
    return labels


def group_statistics(groups: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                     threshold: float) -> dict[str, dict[str, Any]]:
    """Additive per-group statistics; groups under ``MIN_GROUP`` rows are pooled first.

    Privacy meaning: these are counts and sums over at least ``MIN_GROUP`` people
    (or over the pooled remainder), never a row.
    """
    groups = _pool_small(groups)
    pd_ = 1 / (1 + np.exp(-logits))
    approved = pd_ < threshold
    stats = {}
    for group in sorted(set(groups)):
        rows = groups == group
        positive, negative = score_histograms(logits[rows], labels[rows])
        stats[str(group)] = {
            "n": int(rows.sum()), "n_default": int(labels[rows].sum()),
            "sum_pd": float(pd_[rows].sum()), "approved": int(approved[rows].sum()),
            "approved_good": int((approved & (labels == 0))[rows].sum()),
            "hist_pos": positive.tolist(), "hist_neg": negative.tolist(),
        }
    return stats


def _pool_small(groups: np.ndarray) -> np.ndarray:
    values, counts = np.unique(groups.astype(str), return_counts=True)
    small = set(values[counts < MIN_GROUP])
    return np.array([OTHER if g in small else g for g in groups.astype(str)], dtype=object)


def bank_fairness(contract: Contract, table: pd.DataFrame, logits: np.ndarray,
                  labels: np.ndarray, threshold: float) -> dict[str, dict]:
    """One bank's additive fairness statistics per protected view, on its held-out rows."""
    return {view: group_statistics(groups, logits, labels, threshold)
            for view, groups in groupings(contract, table).items()}


def merge_fairness(parts: list[dict[str, dict]], threshold: float) -> dict[str, Any]:
    """Add the banks' statistics per view and group; derive metrics and the largest gaps.

    Privacy meaning: the consortium sees only sums over banks of group aggregates.
    """
    views: dict[str, dict[str, dict]] = {}
    for part in parts:
        for view, groups in part.items():
            target = views.setdefault(view, {})
            for group, stats in groups.items():
                target[group] = _add(target.get(group, _empty()), stats)
    result = {view: _view_metrics(groups) for view, groups in views.items()}
    return {"threshold": threshold, "rule": THRESHOLD_RULE, "min_group": MIN_GROUP,
            "views": result}


def _empty() -> dict[str, Any]:
    return {"n": 0, "n_default": 0, "sum_pd": 0.0, "approved": 0, "approved_good": 0,
            "hist_pos": [0] * HISTOGRAM_BINS, "hist_neg": [0] * HISTOGRAM_BINS}


def _add(total: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    out = {k: total[k] + stats[k] for k in ("n", "n_default", "sum_pd", "approved",
                                            "approved_good")}
    out["hist_pos"] = (np.asarray(total["hist_pos"]) + stats["hist_pos"]).tolist()
    out["hist_neg"] = (np.asarray(total["hist_neg"]) + stats["hist_neg"]).tolist()
    return out


def _view_metrics(groups: dict[str, dict]) -> dict[str, Any]:
    rows = {group: _group_metrics(stats) for group, stats in sorted(groups.items())}
    return {"groups": rows, "gaps": _gaps(rows)}


def _group_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    n, n_default = stats["n"], stats["n_default"]
    n_good = n - n_default
    enough = n_default >= MIN_CLASS_FOR_AUC and n_good >= MIN_CLASS_FOR_AUC
    auc = histogram_auc(np.asarray(stats["hist_pos"]), np.asarray(stats["hist_neg"]))
    mean_pd = stats["sum_pd"] / n if n else None
    observed = n_default / n if n else None
    return {
        "n": n, "n_default": n_default,
        "auc": auc if enough else None,
        "mean_pd": mean_pd, "observed_default_rate": observed,
        "calibration_gap": None if n == 0 else mean_pd - observed,
        "approval_rate": stats["approved"] / n if n else None,
        "approval_rate_good": stats["approved_good"] / n_good if n_good else None,
    }


def _gaps(rows: dict[str, dict]) -> dict[str, Any]:
    """Largest difference across groups (excluding the pooled remainder) per metric."""
    named = {g: r for g, r in rows.items() if g != OTHER}
    gaps: dict[str, Any] = {}
    for metric in ("auc", "calibration_gap", "approval_rate", "approval_rate_good"):
        values = {g: r[metric] for g, r in named.items() if r[metric] is not None}
        if len(values) < 2:
            gaps[metric] = None
            continue
        low, high = min(values, key=values.get), max(values, key=values.get)
        gaps[metric] = {"gap": values[high] - values[low], "lowest": low, "highest": high}
    rates = [r["approval_rate"] for r in named.values() if r["approval_rate"]]
    gaps["disparate_impact_ratio"] = min(rates) / max(rates) if len(rates) >= 2 else None
    return gaps
