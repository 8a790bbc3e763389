"""Privacy audit of a finished run: measured privacy, fairness, reasons and utility.

Each bank computes its part on its own host (:func:`bank_audit`: a one-run canary
audit of its training mechanism in a shadow run, membership inference, fairness,
explanations and utility on its own rows, plus its DP specification from its own
ledger and a canary test of the DP path); the
consortium report merges the parts without any row (:func:`merge_bank_parts`).
:func:`build_audit` does both for a simulation run directory and writes
``audit.json`` and ``audit.html``.
"""

from fedrisk.audit.bank import AuditSettings, BankData, RunFacts, bank_audit
from fedrisk.audit.report import merge_bank_parts
from fedrisk.audit.run import AuditError, build_audit, build_report_from_parts

__all__ = [
    "AuditError",
    "AuditSettings",
    "BankData",
    "RunFacts",
    "bank_audit",
    "build_audit",
    "build_report_from_parts",
    "merge_bank_parts",
]
