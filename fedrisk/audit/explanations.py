"""Section 6: global feature attributions and adverse-action reasons in plain words.

Attributions are Captum Integrated Gradients on the model's logit (see
:mod:`fedrisk.models.explain`), relative to the bank's average applicant (mean
encoded train row), one-hot slots folded into their source column. A declined
applicant's reasons are the columns that raised their PD most above that average
applicant's, phrased like an adverse-action notice. What leaves a bank: mean
attributions per column, how often each reason was given, and a few example
reason lists *without* the applicants' values (a numeric column says only
"higher/lower than typical").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from fedrisk.data import Contract
from fedrisk.data.values import canonical_strings
from fedrisk.models.explain import explain_rows, top_reasons

from .mia import model_logits

MAX_ROWS = 600
EXAMPLES = 3
REASONS = 3
LABELS = {
    "funded_amnt": "Loan amount", "int_rate": "Interest rate", "annual_inc": "Annual income",
    "delinq_2yrs": "Delinquencies in the last 2 years",
    "inq_last_6mths": "Credit inquiries in the last 6 months",
    "revol_util": "Revolving credit utilisation", "acc_now_delinq": "Accounts now delinquent",
    "open_il_6m": "Instalment accounts opened in the last 6 months",
    "open_il_12m": "Instalment accounts opened in the last 12 months",
    "open_il_24m": "Instalment accounts opened in the last 24 months",
    "total_bal_il": "Balance of instalment accounts", "all_util": "Overall credit utilisation",
    "inq_fi": "Personal finance inquiries", "inq_last_12m": "Credit inquiries in the last year",
    "delinq_amnt": "Amount past due", "num_il_tl": "Number of instalment accounts",
    "total_il_high_credit_limit": "Instalment credit limit", "term": "Loan term",
    "verification_status": "Income verification", "emp_length": "Length of employment",
    "Seniority": "Years with current employer", "Time": "Requested loan term",
    "Expenses": "Monthly expenses", "Income": "Income", "Assets": "Assets", "Debt": "Debt",
    "Amount": "Loan amount", "Price": "Price of the purchase", "Home": "Housing situation",
    "Records": "Past credit records", "Job": "Type of employment",
}


def label_of(column: str) -> str:
    """Plain-words name of a contract column."""
    return LABELS.get(column, column.replace("_", " ").capitalize())


def reason_text(column: str, contract: Contract, row: pd.Series | None,
                baseline_value: float | None) -> str:
    """One adverse-action reason in plain words, e.g. "Interest rate higher than typical"."""
    numeric = {f.name for f in contract.numeric_inputs}
    if row is None:
        return label_of(column)
    if column in numeric:
        value = pd.to_numeric(pd.Series([row[column]]), errors="coerce").iloc[0]
        if pd.isna(value) or baseline_value is None:
            return f"{label_of(column)} not provided"
        direction = "higher" if value > baseline_value else "lower"
        return f"{label_of(column)} {direction} than typical"
    value = canonical_strings(pd.Series([row[column]])).iloc[0]
    shown = "not provided" if value is None else str(value).replace("_", " ")
    return f"{label_of(column)}: {shown}"


def bank_explanations(model: nn.Module, contract: Contract, train: pd.DataFrame,
                      test: pd.DataFrame, threshold: float, seed: int) -> dict[str, Any]:
    """Global attributions and adverse-action reasons on one bank's held-out applicants.

    Privacy meaning: computed at the bank; what is returned are averages and reason
    counts, plus a few reason lists without values, no row.
    """
    names = contract.feature_names
    encoded_train = contract.encode(train)
    baseline = encoded_train.mean(axis=0)
    rng = np.random.default_rng(seed)
    sample = test.iloc[np.sort(rng.permutation(len(test))[:MAX_ROWS])]
    explained = explain_rows(model, contract.encode(sample), baseline, names)
    logits = model_logits(model, contract.encode(sample))
    declined = np.flatnonzero(1 / (1 + np.exp(-logits)) >= threshold)
    typical = _typical_values(contract, train)
    reasons = [[reason_text(c, contract, sample.iloc[i], typical.get(c))
                for c, _ in top_reasons(explained.values[i], explained.columns, REASONS)]
               for i in declined]
    counts: dict[str, int] = {}
    for listed in reasons:
        if listed:  # the principal (first) reason of each declined applicant
            counts[listed[0]] = counts.get(listed[0], 0) + 1
    picks = rng.permutation(len(reasons))[:EXAMPLES]
    return {
        "n_explained": len(sample), "n_declined": len(declined),
        "mean_abs": dict(zip(explained.columns, np.abs(explained.values).mean(axis=0).tolist(),
                             strict=True)),
        "mean_signed": dict(zip(explained.columns, explained.values.mean(axis=0).tolist(),
                                strict=True)),
        "principal_reason_counts": counts,
        "examples": [{"pd_band": _band(contract, logits[declined[i]]), "reasons": reasons[i]}
                     for i in picks],
        "convergence_delta": explained.convergence_delta,
        "baseline": "the bank's average applicant (mean encoded train row)",
        "method": "Integrated Gradients (Captum), logit of default, 32 steps",
    }


def _band(contract: Contract, logit: float) -> str:
    """Risk band of a PD (a coarse label, not the applicant's score)."""
    return str(contract.risk_bands([1 / (1 + np.exp(-logit))])[0])


def _typical_values(contract: Contract, train: pd.DataFrame) -> dict[str, float]:
    """Mean of each numeric input at this bank (the baseline applicant's value, unencoded)."""
    return {f.name: float(np.clip(pd.to_numeric(train[f.name], errors="coerce"), f.lower,
                                  f.upper).fillna(f.impute).mean())
            for f in contract.numeric_inputs}


def merge_explanations(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Consortium view: attributions averaged over banks (weighted by rows explained)."""
    total = sum(p["n_explained"] for p in parts.values()) or 1
    columns = list(next(iter(parts.values()))["mean_abs"]) if parts else []
    mean_abs = {c: sum(p["mean_abs"][c] * p["n_explained"] for p in parts.values()) / total
                for c in columns}
    mean_signed = {c: sum(p["mean_signed"][c] * p["n_explained"] for p in parts.values())
                   / total for c in columns}
    counts: dict[str, int] = {}
    for part in parts.values():
        for reason, n in part["principal_reason_counts"].items():
            counts[reason] = counts.get(reason, 0) + n
    ranked = sorted(columns, key=lambda c: -mean_abs[c])
    return {
        "global": [{"column": c, "label": label_of(c), "mean_abs": mean_abs[c],
                    "mean_signed": mean_signed[c]} for c in ranked],
        "principal_reasons": sorted(counts.items(), key=lambda item: -item[1]),
        "examples": {bank: p["examples"] for bank, p in parts.items()},
        "n_declined": sum(p["n_declined"] for p in parts.values()),
        "n_explained": sum(p["n_explained"] for p in parts.values()),
        "convergence_delta": max((p["convergence_delta"] for p in parts.values()), default=0.0),
    }
