"""Audit a finished simulation run directory: every bank's part in one go, then the report.

Run-dir layout read here (written by ``fedrisk simulate``): ``metrics.json``,
``model.safetensors``, ``data/{banks.json, contract.toml, <bank>.csv}`` and
``banks/<bank>/{ledgers/*.jsonl, personalized/<run_id>.safetensors}``. In a
deployment each bank would call :func:`fedrisk.audit.bank.bank_audit` on its own
host and send only the returned part; :func:`build_report_from_parts` merges them.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedrisk.data import Contract, DataError, read_table
from fedrisk.models import load_model
from fedrisk.privacy.chain import TrustedKeys
from fedrisk.privacy.policy import BankPolicy

from .bank import AuditSettings, BankData, RunFacts, bank_audit
from .render import write_html
from .report import merge_bank_parts
from .trainer import TrainFn

MANIFEST = "banks.json"


class AuditError(Exception):
    """The run directory cannot be audited (missing or inconsistent files); one line."""


def load_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json (the coordinator's record of what the banks reported)."""
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AuditError(f"{path}: not found; is {run_dir} a finished fedrisk run?") from None
    except json.JSONDecodeError as error:
        raise AuditError(f"{path}: not valid JSON ({error.msg})") from None


def run_facts(run_dir: Path, metrics: dict[str, Any]) -> tuple[RunFacts, Any]:
    """The run's public facts and its final global model."""
    model_path = Path(run_dir) / metrics.get("model", {}).get("file", "model.safetensors")
    if not model_path.is_file():
        raise AuditError(f"{model_path}: final model not found")
    spec, model = load_model(model_path)
    return RunFacts(str(metrics.get("run_id", "")), dict(metrics.get("config", {})), spec), model


def bank_inputs(run_dir: Path, metrics: dict[str, Any], banks: list[str] | None = None,
                trusted_keys: TrustedKeys | None = None) -> list[BankData]:
    """Each simulated bank's own table, the contract, its state dir and what it reported.

    ``trusted_keys`` (the banks' registered ledger keys) pins every bank's ledgers.
    """
    data_dir = Path(run_dir) / "data"
    try:
        manifest = json.loads((data_dir / MANIFEST).read_text())
        contract = Contract.load(data_dir / manifest["contract"])
    except (FileNotFoundError, KeyError, json.JSONDecodeError, DataError) as error:
        raise AuditError(f"{data_dir}: cannot read the banks' manifest or contract: "
                         f"{error}") from None
    reported = {b["id"]: b for b in metrics.get("banks", [])}
    entries = [e for e in manifest["banks"] if banks is None or e["id"] in banks]
    if banks is not None and len(entries) != len(set(banks)):
        known = ", ".join(e["id"] for e in manifest["banks"])
        raise AuditError(f"unknown bank in {', '.join(banks)}; this run has {known}")
    return [BankData(e["id"], read_table(data_dir / e["file"]), contract,
                     Path(run_dir) / "banks" / e["id"], reported.get(e["id"], {}),
                     split=_policy_split(data_dir, e), trusted_keys=trusted_keys)
            for e in entries]


def _policy_split(data_dir: Path, entry: dict[str, Any]) -> tuple[float, int] | None:
    """A simulated bank's own held-out split, from the policy the manifest names."""
    if "policy" not in entry:
        return None
    policy = BankPolicy.load(data_dir / entry["policy"])
    return policy.test_fraction, policy.split_seed


def audit_parts(run_dir: Path, banks: list[str] | None, settings: AuditSettings,
                train_fn: TrainFn | None, trusted_keys: TrustedKeys | None = None
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run every bank's part of the audit of one run (simulation: all banks here)."""
    started = time.monotonic()
    metrics = load_metrics(run_dir)
    facts, model = run_facts(run_dir, metrics)
    parts = [bank_audit(bank, model, facts, settings, train_fn)
             for bank in bank_inputs(run_dir, metrics, banks, trusted_keys)]
    run = {
        "run_id": facts.run_id, "run_dir": str(run_dir), "privacy": metrics.get("privacy"),
        "config": facts.config, "model": {"spec": facts.spec.to_dict(),
                                          "final": metrics.get("final")},
        "institution_dp": metrics.get("institution_dp"),
        "audit_seed": settings.seed,
        "audit_settings": {"n_reference": settings.n_reference, "seed": settings.seed,
                           "threshold": settings.threshold, "canaries": settings.canaries,
                           "input_canaries": settings.input_canaries,
                           "canary_confidence": settings.canary_confidence,
                           "claimed_epsilon": settings.claimed_epsilon},
        "seconds": round(time.monotonic() - started, 1),
    }
    return run, parts


def build_audit(run_dir: Path, output_dir: Path, compare_run: Path | None = None,
                banks: list[str] | None = None, settings: AuditSettings | None = None,
                train_fn: TrainFn | None = None, trusted_keys: TrustedKeys | None = None
                ) -> dict[str, Any]:
    """Audit a finished run; write ``audit.json`` and ``audit.html`` to ``output_dir``.

    Privacy meaning: measures the run's privacy claim (ledger-recomputed ε, attacks
    on the final model, a canary test of the DP path) next to fairness, reasons and
    utility; ``compare_run`` (e.g. the non-DP baseline on the same data) is audited
    the same way and shown side by side. ``trusted_keys`` (the banks' registered ledger
    keys, as a consortium keeps them) pins the audited run's ledgers; the compared run's
    banks may have other keys and are not pinned.

    Returns:
        The audit document (the content of audit.json).

    """
    settings = settings or AuditSettings()
    started = time.monotonic()
    run, parts = audit_parts(Path(run_dir), banks, settings, train_fn, trusted_keys)
    compare = None
    if compare_run is not None:
        compare_settings = replace(settings, implementation_check=False,
                                   claimed_epsilon=None)
        other_run, other_parts = audit_parts(Path(compare_run), banks, compare_settings,
                                             train_fn)
        compare = merge_bank_parts(other_parts, other_run)
    run["seconds"] = round(time.monotonic() - started, 1)
    document = merge_bank_parts(parts, run, compare)
    write_outputs(document, Path(output_dir))
    return document


def build_report_from_parts(part_files: list[Path], run: dict[str, Any], output_dir: Path
                            ) -> dict[str, Any]:
    """Consortium side of a deployment: merge the banks' part files (JSON) into the report."""
    parts = [json.loads(Path(p).read_text()) for p in part_files]
    document = merge_bank_parts(parts, run)
    write_outputs(document, Path(output_dir))
    return document


def write_outputs(document: dict[str, Any], output_dir: Path) -> None:
    """Write audit.json (strict JSON: non-finite numbers as strings) and audit.html."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "audit.json").write_text(json.dumps(_strict(document), indent=2))
    write_html(document, output_dir / "audit.html")


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return value
