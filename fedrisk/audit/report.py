"""The consortium report: merges the banks' parts (no rows) into the audit.json document.

Sections: 1 threat and trust model, 2 DP specification per bank, 3 empirical
privacy audit, 4 implementation check, 5 fairness, 6 explanations, 7 utility,
8 reproducibility (with the mapping to GDPR Art. 35, EU AI Act Annex IV, SR 11-7).
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .explanations import merge_explanations
from .fairness import merge_fairness
from .utility import merge_utility

SCHEMA_VERSION = 1
PACKAGES = ("fedrisk", "torch", "opacus", "dp-accounting", "flwr", "numpy", "pandas", "scipy",
            "scikit-learn", "captum", "jinja2", "matplotlib", "safetensors", "cryptography")
SECTIONS = (
    ("threat_model", "1. Threat and trust model"),
    ("dp_specification", "2. DP specification per bank"),
    ("empirical_privacy", "3. Empirical privacy audit"),
    ("implementation_check", "4. Implementation check"),
    ("fairness", "5. Fairness across protected attributes"),
    ("explanations", "6. Explanations"),
    ("utility", "7. Utility"),
    ("reproducibility", "8. Reproducibility and regulatory mapping"),
)
COMPLIANCE = (
    ("1. Threat and trust model", "Art. 35(7)(a) systematic description of processing; "
     "(7)(c) risks to data subjects", "Annex IV 2(b) design choices and assumptions; "
     "2(g) cybersecurity", "Model documentation: assumptions and limitations"),
    ("2. DP specification", "Art. 35(7)(d) safeguards and measures (Art. 25, 32)",
     "Annex IV 2(d) data governance; 2(g) measures", "Conceptual soundness of the controls"),
    ("3. Empirical privacy audit", "Art. 35(7)(c) assessment of risk of re-identification",
     "Annex IV 4 testing and validation; Art. 15 robustness", "Outcomes analysis, "
     "independent testing of the privacy claim"),
    ("4. Implementation check", "Art. 35(7)(d) evidence the safeguard works as stated",
     "Annex IV 2(g) validation procedures", "Ongoing monitoring: process verification"),
    ("5. Fairness", "Art. 35(7)(c) risks to rights and freedoms (non-discrimination)",
     "Annex IV 2(g) bias metrics, Art. 10(2)(f)", "Outcomes analysis by segment"),
    ("6. Explanations", "Art. 22(3) and Recital 71: meaningful information on the logic",
     "Annex IV 2(b),(e) interpretability; Art. 13 transparency",
     "Conceptual soundness: drivers of the score; adverse-action reasons"),
    ("7. Utility", "Art. 35(7)(b) necessity and proportionality (does it work?)",
     "Annex IV 3 accuracy metrics; Art. 15 accuracy", "Benchmarking and outcomes analysis"),
    ("8. Reproducibility", "Art. 5(2) accountability; Art. 30 records",
     "Annex IV 1, 2(a),(c) versions, data, training; Art. 12 record-keeping",
     "Model inventory, versioning and replicability"),
)


def merge_bank_parts(parts: list[dict[str, Any]], run: dict[str, Any],
                     compare: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the banks' audit parts into the consortium audit document (audit.json).

    Args:
        parts: one :func:`fedrisk.audit.bank.bank_audit` result per bank (aggregates only).
        run: run facts: ``run_id``, ``run_dir``, ``privacy``, ``config``, ``model``, optional
            ``metrics`` (the run's metrics.json ``final``) and ``seconds``.
        compare: the merged document of a comparison run (e.g. the non-DP baseline).

    Privacy meaning: the merge sees what the banks chose to release (metrics,
    thinned curves, sums over groups and bins) and nothing else.

    """
    threshold = parts[0]["threshold"] if parts else None
    banks = [_bank_summary(p) for p in parts]
    checks = [p["implementation_check"] for p in parts]
    applicable = [c for c in checks if c.get("applicable")]
    document = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": run.get("run_id"), "run_dir": run.get("run_dir"),
        "privacy": run.get("privacy"), "dp": bool(run.get("config", {}).get("dp", True)),
        "claimed_epsilon": (run.get("audit_settings") or {}).get("claimed_epsilon"),
        "sections": [{"id": key, "title": title} for key, title in SECTIONS],
        "threat_model": threat_model(run.get("config", {})),
        "banks": banks,
        # The coordinator's claim (metrics.json): it adds the noise, so no bank can check it.
        "institution_dp": run.get("institution_dp"),
        "audit_passed": _all_or_none([b["audit_passed"] for b in banks]),
        "ledgers_ok": all(b["ledger_ok"] is True for b in banks),
        "canary_audit": canary_summary(parts, banks),
        "implementation_check": {
            "applicable": bool(applicable),
            "passed": (all(c["passed"] is True for c in applicable) if applicable else None),
            "banks": {p["bank_id"]: p["implementation_check"] for p in parts},
        },
        "fairness": merge_fairness([p["fairness"] for p in parts], threshold),
        "explanations": merge_explanations({p["bank_id"]: p["explanations"] for p in parts}),
        "utility": merge_utility({p["bank_id"]: p["utility"] for p in parts}),
        "bank_parts": {p["bank_id"]: _part_without_bulk(p) for p in parts},
        "reproducibility": reproducibility(run, parts),
    }
    if compare is not None:
        document["compare"] = comparison(document, compare)
    return document


def _bank_summary(part: dict[str, Any]) -> dict[str, Any]:
    spec, membership, verdict = part["dp_spec"], part["membership"], part["verdict"]
    attacks = membership["global"]
    summary = {
        "id": part["bank_id"], "n_train": part["n_train"], "n_test": part["n_test"],
        "epsilon": spec.get("epsilon"), "epsilon_accountant": spec.get("headline_accountant"),
        "epsilon_rdp": spec.get("epsilon_rdp"), "epsilon_pld": spec.get("epsilon_pld"),
        "epsilon_global_model": spec.get("epsilon_global_model"),
        "epsilon_reported": spec.get("epsilon_reported"), "delta": spec.get("delta"),
        "delta_below_1_over_n": spec.get("delta_below_1_over_n"),
        "ledger_ok": spec.get("ledger", {}).get("ok"),
        "ledger_reason": spec.get("ledger", {}).get("error"),
        "mia_auc": attacks["auc"], "mia_auc_se": attacks["auc_se"],
        "mia_attack": attacks["strongest_attack"],
        "mia_auc_loss": attacks["attacks"]["loss"]["auc"],
        "mia_auc_rmia": attacks["attacks"].get("rmia", {}).get("auc"),
        "tpr_at_1pct_fpr": attacks["tpr_at_1pct_fpr"],
        "tpr_at_01pct_fpr": attacks["tpr_at_01pct_fpr"],
        "advantage": attacks["advantage"],
        "epsilon_lower_bound": attacks["epsilon_lower_bound"],
        "audit_passed": verdict["audit_passed"],
        "implementation_check_passed": part["implementation_check"].get("passed"),
    }
    if "eval_attack" in part:
        attack = part["eval_attack"]
        summary |= {"epsilon_eval": spec.get("epsilon_eval"),
                    "eval_noise_multiplier": spec.get("eval_noise_multiplier"),
                    "eval_attack": {k: attack[k] for k in (
                        "trials", "tpr", "fpr", "advantage", "epsilon_lower_bound",
                        "epsilon_release", "passed")} | {"epsilon_eval": spec.get("epsilon_eval")}}
    summary |= _canary_keys(part)
    if "personalized" in membership:
        personal = membership["personalized"]
        summary |= {"personalized_mia_auc": personal["auc"],
                    "personalized_epsilon_lower_bound": personal["epsilon_lower_bound"]}
    return summary


def _canary_keys(part: dict[str, Any]) -> dict[str, Any]:
    """The one-run canary audit's bounds and counts (white-box, and black-box beside it)."""
    canary, verdict = part.get("canary_audit", {}), part["verdict"]
    keys: dict[str, Any] = {"canary_applicable": canary.get("applicable", False),
                            "canary_claimed_epsilon": canary.get("claimed_epsilon"),
                            "canary_claim_source": canary.get("claim_source")}
    for prefix, name, row in (("canary", "white_box", "canary"),
                              ("canary_black_box", "black_box", "canary_black_box")):
        audit = canary.get(name) or {}
        keys |= {f"{prefix}_epsilon_lower_bound": audit.get("epsilon_lower_bound"),
                 f"{prefix}_guesses": audit.get("guesses"),
                 f"{prefix}_correct": audit.get("correct"),
                 f"{prefix}_variant": audit.get("variant"),
                 f"{prefix}_confidence": audit.get("confidence"),
                 f"{prefix}_count": audit.get("canaries"),
                 f"{prefix}_passed": verdict.get(row, {}).get("passed")}
    keys["canary_black_box_claimed_epsilon"] = (canary.get("black_box") or {}).get(
        "epsilon_claim")
    return keys


def canary_summary(parts: list[dict[str, Any]], banks: list[dict[str, Any]]) -> dict[str, Any]:
    """Run-level view of the canary audits: applicable, passed, and what the bound means."""
    applicable = [b for b in banks if b.get("canary_applicable")]
    first = next((p["canary_audit"] for p in parts
                  if p.get("canary_audit", {}).get("applicable")), {})
    return {
        "applicable": bool(applicable),
        "passed": _all_or_none([b["canary_passed"] for b in applicable]),
        "claim_source": first.get("claim_source"),
        "confidence": (first.get("white_box") or {}).get("confidence"),
        "canary_norm": (first.get("white_box") or {}).get("canary_norm"),
        "method": "one-run audit (Steinke, Nasr, Jagielski 2023, arXiv 2305.08846): m "
                  "canaries each in a shadow replay of the bank's mechanism with probability "
                  "1/2, guesses on the highest and lowest scores with abstentions",
        "meaning": "a lower bound on the ε of the bank's training mechanism that holds with "
                   "the stated confidence: a mechanism that really is (ε, δ)-DP is reported "
                   "above ε with probability at most 1 − confidence",
    }


def _all_or_none(values: list[bool | None]) -> bool | None:
    if not values or all(v is None for v in values):
        return None
    return all(v is True for v in values)


def _part_without_bulk(part: dict[str, Any]) -> dict[str, Any]:
    """A bank's part minus the histograms (kept in the merged sections), for the record."""
    utility = {k: v for k, v in part["utility"].items() if not k.startswith("hist_")}
    return {**{k: v for k, v in part.items() if k not in ("fairness", "utility")},
            "utility": utility}


def threat_model(config: dict[str, Any]) -> dict[str, Any]:
    """Section 1: parties, what each sees, assumptions and what is not protected."""
    secagg = bool(config.get("secure_aggregation", config.get("secure-aggregation", True)))
    dp = bool(config.get("dp", True))
    level = str(config.get("dp-level", "record")) if dp else "record"
    coordinator_sees = ("only the sum of the banks' masked updates per round (Flower SecAgg+),"
                        " plus each bank's scalar metrics" if secagg else
                        "each bank's individual model update every round, plus scalar metrics")
    return {
        "parties": ["banks (data owners; each trains on its own rows)",
                    "coordinator (Flower SuperLink/ServerApp; aggregates updates)",
                    "model users (anyone who receives the final global model)"],
        "coordinator_sees": coordinator_sees,
        "banks_see": "the global model after every round (hence other banks' aggregate "
                     "contribution) and the final global model",
        "secure_aggregation": secagg, "dp": dp,
        "protected": ([f"each record of each bank: record-level (ε, δ)-DP (DP-SGD, "
                       f"δ={config.get('target-delta')}) for everything its bank released, "
                       "against anyone, including other banks and the coordinator"]
                      if dp and level != "institution" else []) + (
                      ["each whole bank: institution-level (ε, δ)-DP of the released models "
                       "(each bank clips its update; the coordinator adds the noise), ONLY if "
                       "the coordinator adds that noise"] if dp and level != "record" else [])
                      + ([] if dp else ["nothing beyond aggregation: NON-PRIVATE baseline"]),
        "assumptions": [
            "banks run the agreed code (the egress guard and DP-SGD); the implementation "
            "check below tests that code",
            "the coordinator is honest-but-curious; SecAgg+ tolerates dropouts and "
            "collusion below the reconstruction threshold" if secagg else
            "the coordinator is trusted with individual updates (no secure aggregation)",
            "DP noise and Poisson sampling randomness are secret to the bank",
            "banks' ledgers and signing keys stay on the banks' hosts",
        ],
        "not_protected": [
            "group-level or bank-level properties (e.g. a bank's default rate) beyond "
            "record-level DP; institution-level DP is a separate setting",
            "what a bank learns from its own data, and its personalized model's use at "
            "that bank",
            "membership of a customer who appears in several banks: each bank's ε "
            "applies separately and they add up",
            "inference from the model's legitimate predictions about population trends",
        ],
    }


def reproducibility(run: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Section 8: versions, config, seeds, data fingerprints, code revision, mapping."""
    config = run.get("config", {})
    return {
        "python": platform.python_version(), "packages": _versions(),
        "code_revision": _git_revision(), "config": config,
        "seeds": {"run_seed": config.get("seed"), "audit_seed": run.get("audit_seed"),
                  "note": "DP noise and Poisson sampling are drawn from the OS entropy pool "
                          "by design, so DP training (run and reference models) is not "
                          "bit-reproducible; splits, initialization and audit samples are"},
        "data_fingerprints": {p["bank_id"]: {"sha256": p["fingerprint"],
                                             "ledger_matches": p["ledger_fingerprint_matches"]}
                              for p in parts},
        "model": run.get("model"), "audit_settings": run.get("audit_settings"),
        "seconds": run.get("seconds"),
        "compliance_mapping": [dict(zip(("section", "gdpr_art35_dpia", "eu_ai_act_annex_iv",
                                         "sr_11_7"), row, strict=True)) for row in COMPLIANCE],
    }


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_revision() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def comparison(document: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """DP vs comparison run: attack strength, utility and fairness gaps side by side."""
    theirs = {b["id"]: b for b in other["banks"]}
    banks = [{"id": b["id"], "mia_auc": b["mia_auc"],
              "compare_mia_auc": theirs.get(b["id"], {}).get("mia_auc"),
              "advantage": b["advantage"],
              "compare_advantage": theirs.get(b["id"], {}).get("advantage"),
              "epsilon_lower_bound": b["epsilon_lower_bound"],
              "compare_epsilon_lower_bound": theirs.get(b["id"], {}).get("epsilon_lower_bound"),
              "tpr_at_1pct_fpr": b["tpr_at_1pct_fpr"],
              "compare_tpr_at_1pct_fpr": theirs.get(b["id"], {}).get("tpr_at_1pct_fpr"),
              "canary_epsilon_lower_bound": b.get("canary_epsilon_lower_bound"),
              "compare_canary_epsilon_lower_bound": theirs.get(b["id"], {}).get(
                  "canary_epsilon_lower_bound")}
             for b in document["banks"]]
    gaps = {}
    for view, data in document["fairness"]["views"].items():
        other_view = other["fairness"]["views"].get(view, {"gaps": {}})
        gaps[view] = {metric: {"this": _gap(data["gaps"].get(metric)),
                               "compare": _gap(other_view["gaps"].get(metric))}
                      for metric in ("auc", "calibration_gap", "approval_rate",
                                     "approval_rate_good", "disparate_impact_ratio")}
    return {
        "run_dir": other.get("run_dir"), "privacy": other.get("privacy"), "banks": banks,
        "utility": {"this": _utility_brief(document), "compare": _utility_brief(other)},
        "fairness_gaps": gaps, "document": other,
    }


def _gap(value: Any) -> float | None:
    return value["gap"] if isinstance(value, dict) else value


def _utility_brief(document: dict[str, Any]) -> dict[str, Any]:
    utility = document["utility"]
    return {k: utility[k] for k in ("auc", "brier", "ks")}
