"""Plots (matplotlib, embedded as base64 PNG) and the self-contained audit.html (jinja2)."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jinja2 import Environment, select_autoescape  # noqa: E402

from .template import TEMPLATE  # noqa: E402

ATTACK_TITLES = {"loss": "loss threshold", "rmia": "RMIA (reference models)",
                 "lira_offline": "LiRA offline"}


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def roc_plot(document: dict[str, Any]) -> str:
    """Log-scale ROC curves of every attack on the global model, per bank (dashed: compare)."""
    parts = document["bank_parts"]
    attacks = list(next(iter(parts.values()))["membership"]["global"]["attacks"]) if parts else []
    figure, axes = plt.subplots(1, max(len(attacks), 1), figsize=(4.2 * max(len(attacks), 1), 3.8),
                                squeeze=False)
    other = document.get("compare", {}).get("document", {}).get("bank_parts", {})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, attack in zip(axes[0], attacks, strict=False):
        for index, (bank, part) in enumerate(parts.items()):
            color = colors[index % len(colors)]
            _roc_line(axis, part["membership"]["global"]["attacks"][attack], color, "-", bank)
            if bank in other and attack in other[bank]["membership"]["global"]["attacks"]:
                _roc_line(axis, other[bank]["membership"]["global"]["attacks"][attack], color,
                          "--", None)
        grid = np.logspace(-4, 0, 50)
        axis.plot(grid, grid, ":", color="grey", lw=1)
        axis.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1),
                 xlabel="false positive rate", ylabel="true positive rate",
                 title=ATTACK_TITLES.get(attack, attack))
    axes[0][0].legend(fontsize=7, loc="lower right",
                      title="solid: this run" + (", dashed: compare" if other else ""),
                      title_fontsize=7)
    return _png(figure)


def _roc_line(axis: plt.Axes, summary: dict[str, Any], color: str, style: str,
              label: str | None) -> None:
    fpr = np.maximum(summary["roc"]["fpr"], 1e-4)
    tpr = np.maximum(summary["roc"]["tpr"], 1e-4)
    text = None if label is None else f"{label} (AUC {summary['auc']:.3f})"
    axis.plot(fpr, tpr, style, color=color, lw=1.3, label=text)


def epsilon_plot(document: dict[str, Any]) -> str:
    """Claimed ε against the empirical lower bound per bank (red: bound above the claim)."""
    banks = document["banks"]
    compare = {b["id"]: b for b in document.get("compare", {}).get("banks", [])}
    x = np.arange(len(banks))
    figure, axis = plt.subplots(figsize=(7, 3.2))
    claimed = [_num(b.get("epsilon_global_model")) for b in banks]
    bounds = [b["epsilon_lower_bound"] for b in banks]
    axis.bar(x - 0.25, claimed, 0.25, label="claimed ε (global model, PRV)", color="#4c78a8")
    axis.bar(x, bounds, 0.25, label="empirical ε lower bound (95%)",
             color=["#d62728" if b["audit_passed"] is False else "#59a14f" for b in banks])
    if compare:
        axis.bar(x + 0.25, [compare.get(b["id"], {}).get("compare_epsilon_lower_bound") or 0
                            for b in banks], 0.25, label="ε lower bound, compare run",
                 color="#f28e2b")
    axis.set_xticks(x, [b["id"] for b in banks], fontsize=8)
    axis.set_ylabel("ε")
    axis.legend(fontsize=7)
    axis.set_title("privacy claim vs what the attacks prove")
    return _png(figure)


def canary_plot(document: dict[str, Any]) -> str:
    """Per bank: claimed ε against the one-run canary bounds (red: white-box bound above it)."""
    banks = document["banks"]
    compare = {b["id"]: b for b in document.get("compare", {}).get("banks", [])}
    x = np.arange(len(banks))
    figure, axis = plt.subplots(figsize=(9, 3.4))
    width = 0.2
    axis.bar(x - 1.5 * width, [_num(b.get("canary_claimed_epsilon")) for b in banks], width,
             label="claimed ε", color="#4c78a8")
    axis.bar(x - 0.5 * width, [_num(b.get("canary_epsilon_lower_bound")) for b in banks],
             width, label="white-box canary bound (95%)",
             color=["#d62728" if b.get("canary_passed") is False else "#59a14f" for b in banks])
    axis.bar(x + 0.5 * width, [_num(b.get("canary_black_box_epsilon_lower_bound"))
                               for b in banks], width, label="black-box canary bound (95%)",
             color="#b07aa1")
    if compare:
        axis.bar(x + 1.5 * width, [_num(compare.get(b["id"], {}).get(
            "compare_canary_epsilon_lower_bound")) for b in banks], width,
            label="white-box bound, compare run", color="#f28e2b")
    axis.set_xticks(x, [b["id"] for b in banks], fontsize=8)
    axis.set_ylabel("ε")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    axis.set_title("one-run canary audit: what the bank's mechanism provably leaks")
    return _png(figure)


def _num(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def fairness_plot(document: dict[str, Any]) -> str:
    """Approval rate and calibration gap per group for each protected view."""
    views = document["fairness"]["views"]
    other = document.get("compare", {}).get("document", {}).get("fairness", {}).get("views", {})
    figure, axes = plt.subplots(len(views) or 1, 2, figsize=(10, 2.8 * max(len(views), 1)),
                                squeeze=False)
    for row, (view, data) in enumerate(views.items()):
        groups = list(data["groups"])
        x = np.arange(len(groups))
        for col, metric in enumerate(("approval_rate", "calibration_gap")):
            axis = axes[row][col]
            mine = [_num(data["groups"][g][metric]) for g in groups]
            axis.bar(x - 0.2, mine, 0.4, label="this run", color="#4c78a8")
            if view in other:
                theirs = [_num(other[view]["groups"].get(g, {}).get(metric)) for g in groups]
                axis.bar(x + 0.2, theirs, 0.4, label="compare run", color="#f28e2b")
            axis.set_xticks(x, groups, rotation=45, ha="right", fontsize=7)
            axis.set_title(f"{view}: {metric.replace('_', ' ')}", fontsize=9)
            axis.axhline(0, color="grey", lw=0.8)
            axis.legend(fontsize=7)
    return _png(figure)


def attribution_plot(document: dict[str, Any], top: int = 15) -> str:
    """Mean |Integrated Gradients| per input column over the banks' held-out applicants."""
    rows = document["explanations"]["global"][:top][::-1]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(rows) + 1))
    axis.barh([r["label"] for r in rows], [r["mean_abs"] for r in rows], color="#4c78a8")
    axis.set_xlabel("mean |attribution| to the logit of default")
    axis.tick_params(axis="y", labelsize=8)
    axis.set_title("global feature attributions")
    return _png(figure)


def calibration_plot(document: dict[str, Any], min_rows: int = 10) -> str:
    """Mean predicted PD against observed default rate: consortium and each bank.

    Bins with fewer than ``min_rows`` applicants are left out: their observed rate is noise.
    """
    utility = document["utility"]
    figure, axis = plt.subplots(figsize=(5.5, 4.2))
    shown: list[dict[str, Any]] = []
    for bank, part in utility["per_bank"].items():
        table = [r for r in part["calibration"] if r["n"] >= min_rows]
        axis.plot([r["mean_pd"] for r in table], [r["observed"] for r in table], ".",
                  alpha=0.6, label=bank)
    curves = [("consortium", utility["calibration"], "o-", "black")]
    other = document.get("compare", {}).get("document", {}).get("utility")
    if other:
        curves.append(("compare run", other["calibration"], "s--", "#f28e2b"))
    for label, rows, style, color in curves:
        table = [r for r in rows if r["n"] >= min_rows]
        shown += table
        axis.plot([r["mean_pd"] for r in table], [r["observed"] for r in table], style,
                  color=color, label=label)
    top = 1.1 * max([0.05] + [max(r["mean_pd"], r["observed"]) for r in shown])
    axis.plot([0, top], [0, top], ":", color="grey", label="perfect calibration")
    axis.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted PD",
             ylabel="observed default rate",
             title=f"calibration (held-out splits, bins ≥ {min_rows} rows)")
    axis.legend(fontsize=7)
    return _png(figure)


def plots(document: dict[str, Any]) -> dict[str, str]:
    """Every plot of the report as a base64 PNG."""
    return {"roc": roc_plot(document), "epsilon": epsilon_plot(document),
            "canary": canary_plot(document),
            "fairness": fairness_plot(document), "attributions": attribution_plot(document),
            "calibration": calibration_plot(document)}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        if isinstance(value, float) and not math.isfinite(value):
            return "∞"
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return str(value)


def render_html(document: dict[str, Any]) -> str:
    """The audit as one self-contained HTML page (no external resources)."""
    environment = Environment(autoescape=select_autoescape(default=True))
    environment.filters["f"] = _fmt
    return environment.from_string(TEMPLATE).render(doc=document, plots=plots(document))


def write_html(document: dict[str, Any], path: Path) -> None:
    """Write :func:`render_html` to ``path``."""
    path.write_text(render_html(document), encoding="utf-8")
