"""Section 2: a bank's DP specification, recomputed from its signed ledger.

Nothing here trusts metrics.json for the guarantee: the accountant history is read
from the bank's verified ledger (``privacy_spend`` entries for DP-SGD on the training
rows, ``release_spend`` entries for the evaluation releases of the held-out rows) and
composed afresh with library accountants: Opacus PRV (headline), Opacus RDP and
dp-accounting PLD (cross-checks). metrics.json values are only compared against it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedrisk.privacy.accounting import compose_epsilon
from fedrisk.privacy.chain import LedgerEntry, LedgerError, TrustedKeys
from fedrisk.privacy.release import EVALUATION_RELEASES
from fedrisk.privacy.verify import read_ledger, verify_path

UNIT_OF_PRIVACY = "one customer record of one bank"
NEIGHBOURING = ("add/remove one record (unbounded DP); each DP-SGD step samples every record "
                "independently (Poisson sampling), as the accountants assume")


@lru_cache(maxsize=256)
def cached_epsilon(history: tuple[tuple[float, float, int], ...], delta: float,
                   accountant: str | tuple[str, ...]) -> float:
    """ε at ``delta`` of ``history`` with an Opacus accountant (memoized: RDP/PRV are slow).

    Privacy meaning: the upper bound on how much any one record can change the
    distribution of everything this history's DP-SGD steps released.
    """
    return compose_epsilon(list(history), delta, accountant)


def safe_epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str
                 ) -> float | None:
    """:func:`cached_epsilon`, or None when the accountant cannot compute (PRV sometimes)."""
    try:
        with np.errstate(divide="ignore"):  # PRV takes log(1 − q), -inf at q = 1 (a release)
            value = cached_epsilon(tuple(history), delta, accountant)
    except (ValueError, RuntimeError, ArithmeticError):
        return None
    return value if math.isfinite(value) else float("inf")


def pld_epsilon(history: list[tuple[float, float, int]], delta: float) -> float | None:
    """ε at ``delta`` from dp-accounting's privacy-loss-distribution accountant (cross-check)."""
    try:
        import dp_accounting
        from dp_accounting.pld import PLDAccountant
    except ImportError:
        return None
    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return float("inf")
    accountant = PLDAccountant(value_discretization_interval=1e-3)
    for sigma, rate, steps in history:
        event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, int(steps)))
    return float(accountant.get_epsilon(delta))


def ledger_status(bank_dir: Path, reported_head: str | None,
                  trusted: TrustedKeys | None = None) -> tuple[dict[str, Any], list]:
    """Verify every ledger of a bank (chain, Ed25519 signatures, anchor, pinned key).

    Privacy meaning: the ε history below can only be trusted if it verifies; with
    ``trusted`` (the banks' registered public keys) a ledger rewritten under another
    key fails. Returns the status (JSON) and the verification results.
    """
    directory = bank_dir / "ledgers"
    results = verify_path(directory, trusted) if directory.is_dir() else []
    files = [{"file": r.path.name, "ok": r.ok, "entries": r.entries, "reason": r.reason,
              "bank_id": r.bank_id, "dataset_fingerprint": r.dataset_fingerprint}
             for r in results]
    failed = next((r for r in results if not r.ok), None)
    status = {"present": bool(results), "ok": bool(results) and failed is None,
              "files": files, "reported_head": reported_head, "head_found": None,
              "pinned": trusted is not None}
    if failed is not None:
        status["error"] = str(failed)
    return status, results


def spend_entries(entries: list[LedgerEntry]) -> list[dict[str, Any]]:
    """Bodies of the ``privacy_spend`` entries, in ledger order (each one DP-SGD phase)."""
    return [dict(e.body) for e in entries if e.kind == "privacy_spend"]


def history_of(spends: list[dict[str, Any]]) -> list[tuple[float, float, int]]:
    """Accountant history ``(noise_multiplier, sample_rate, steps)`` of ledger spend bodies."""
    return [(float(b["noise_multiplier"]), float(b["sample_rate"]), int(b["steps"]))
            for b in spends]


def bank_dp_spec(bank_dir: Path, bank_id: str, fingerprint: str, run_id: str, n_train: int,
                 config: dict[str, Any], reported: dict[str, Any] | None,
                 trusted: TrustedKeys | None = None) -> dict[str, Any]:
    """The DP specification of one bank in one run, from its own verified ledger.

    Privacy meaning: ``epsilon`` (PRV, whole run incl. personalization) bounds what
    this bank's records can reveal through everything the run released or kept;
    ``epsilon_global_model`` (federated rounds only) bounds the shared final model.
    A ledger that lacks the head the bank reported to the coordinator was rolled back
    (its spend undercounted) and fails like a broken one.
    """
    reported = reported or {}
    status, results = ledger_status(bank_dir, reported.get("ledger_head"), trusted)
    spec: dict[str, Any] = {
        "dp": bool(config.get("dp", True)), "unit_of_privacy": UNIT_OF_PRIVACY,
        "neighbouring_relation": NEIGHBOURING, "poisson_sampling": True,
        "n_train": n_train, "ledger": status, "source": "ledger",
    }
    path = next((r.path for r in results
                 if r.bank_id == bank_id and r.dataset_fingerprint == fingerprint), None)
    entries: list[LedgerEntry] = []
    if path is not None:
        try:
            entries = read_ledger(path, trusted)
        except LedgerError as error:
            status["ok"] = False
            status["error"] = str(error)
    status["matches_data"] = path is not None
    if entries and status["reported_head"]:
        status["head_found"] = any(e.entry_hash == status["reported_head"] for e in entries)
        if not status["head_found"]:
            status["ok"] = False
            status["error"] = (f"{path}: lacks the head {status['reported_head'][:16]} the bank "
                               "reported: the ledger was rolled back or truncated")
    return spec | _spend_summary(entries, run_id, n_train, config, reported)


def _spend_summary(entries: list[LedgerEntry], run_id: str, n_train: int,
                   config: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    spends = spend_entries(entries)
    run = [b for b in spends if str(b.get("run_id")) == str(run_id)]
    train = [b for b in run if b.get("phase", "train") == "train"]
    delta = float(run[0]["delta"]) if run else float(config.get("target-delta", 1e-5))
    summary: dict[str, Any] = {
        "delta": delta, "delta_below_1_over_n": delta < 1 / max(n_train, 1),
        "one_over_n": 1 / max(n_train, 1),
        "rounds_joined": len({int(b["round"]) for b in train}),
        "phases": [{k: b.get(k) for k in ("round", "phase", "noise_multiplier", "sample_rate",
                                            "steps", "epsilon", "accountant")} for b in run],
        "steps": sum(int(b["steps"]) for b in run),
        "steps_federated": sum(int(b["steps"]) for b in train),
        "noise_multiplier": _single(b["noise_multiplier"] for b in run),
        "sample_rate": _single(b["sample_rate"] for b in run),
        "max_grad_norm": _single(b.get("max_grad_norm", config.get("max-grad-norm"))
                                 for b in run) if run else config.get("max-grad-norm"),
        "run_accountant": run[0].get("accountant") if run else config.get("accountant"),
        "epsilon_reported": reported.get("epsilon"),
        "epsilon_ledger_last": float(run[-1]["epsilon"]) if run else None,
    }
    history, federated = history_of(run), history_of(train)
    summary |= {
        "epsilon": safe_epsilon(history, delta, "prv") if run else None,
        "epsilon_rdp": safe_epsilon(history, delta, "rdp") if run else None,
        "epsilon_pld": pld_epsilon(history, delta) if run else None,
        "epsilon_global_model": safe_epsilon(federated, delta, "prv") if train else None,
        "epsilon_global_model_rdp": safe_epsilon(federated, delta, "rdp") if train else None,
        "epsilon_lifetime": safe_epsilon(history_of(spends), delta, "prv") if spends else None,
    }
    if run and summary["epsilon"] is None:  # PRV can fail on some settings: fall back to RDP
        summary["epsilon"], summary["headline_accountant"] = summary["epsilon_rdp"], "rdp"
    else:
        summary["headline_accountant"] = "prv"
    if train and summary["epsilon_global_model"] is None:
        summary["epsilon_global_model"] = summary["epsilon_global_model_rdp"]
    return summary | evaluation_summary(entries, run_id, delta)


def evaluation_summary(entries: list[LedgerEntry], run_id: str, delta: float) -> dict[str, Any]:
    """The run's DP evaluation releases of the held-out split, from the bank's ledger.

    Privacy meaning: ``epsilon_eval`` (PRV; RDP cross-check) bounds what the evaluation
    statistics that left (noisy score and grade histograms) reveal about any held-out
    record; ``eval_noise_multiplier`` is the Gaussian noise of each release relative to
    its sensitivity (1). None when the run released no DP evaluation.
    """
    releases = [dict(e.body) for e in entries if e.kind == "release_spend"
                and e.body.get("release") in EVALUATION_RELEASES]
    run = [b for b in releases if str(b.get("run_id")) == str(run_id)]
    history = history_of(run)
    return {
        "evaluation_releases": [{k: b.get(k) for k in ("round", "release", "noise_multiplier",
                                                       "sensitivity", "epsilon_eval")}
                                for b in run],
        "eval_noise_multiplier": _single(b["noise_multiplier"] for b in run),
        "eval_accountants": run[-1].get("accountants") if run else None,
        "epsilon_eval": safe_epsilon(history, delta, "prv") if run else None,
        "epsilon_eval_rdp": safe_epsilon(history, delta, "rdp") if run else None,
        "epsilon_eval_reported": float(run[-1]["epsilon_eval"]) if run else None,
        "epsilon_eval_lifetime": (safe_epsilon(history_of(releases), delta, "prv")
                                  if releases else None),
    }


def _single(values: Any) -> float | list[float] | None:
    """The one value of a phase parameter, or the distinct values if phases differ."""
    distinct = sorted({float(v) for v in values if v is not None})
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else distinct
