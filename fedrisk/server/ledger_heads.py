"""The coordinator's record of every bank's ledger, so that a rolled-back bank is noticed.

A bank's ledger proves what it released and what ε it spent, but a hash chain cannot
prove its own end: restored from an older backup, or deleted together with its anchor,
it would verify and lower the bank's lifetime ε. So the coordinator keeps, per bank and
ledger (a ledger id derived one-way from the bank's table), the entry count, head hash
and lifetime ε the bank last reported, and sends them back with the next run's first
message: a bank whose ledger no longer holds that head refuses
(``refused: ledger-rollback``).

File (``ledger-heads-file``, JSON, on the coordinator's host)::

    {"<bank>": {"<ledger id>": {"entries": 57, "head": "<sha256>",
                               "epsilon_lifetime": 5.9, "run_id": "...", "updated": "..."}}}
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from fedrisk.files import write_private_file
from fedrisk.privacy.ledger import known_head_key, known_head_value

REPORTED_KEYS = ("ledger_id", "ledger_entries", "ledger_head")


def read_known_heads(path: str | Path) -> dict[str, dict[str, dict]]:
    """The record, or an empty one when there is none yet (a new consortium)."""
    if not path or not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text())


def known_heads_config(known: dict[str, dict[str, dict]]) -> dict[str, str]:
    """Config entries that tell each bank the ledger head it last reported."""
    return {known_head_key(bank, ledger_id): known_head_value(head["entries"], head["head"])
            for bank, ledgers in known.items() for ledger_id, head in ledgers.items()}


def record_heads(path: str | Path, banks: dict[str, dict], run_id: str) -> None:
    """Merge what banks reported at the end of this run into the record (atomically)."""
    if not path:
        return
    known = read_known_heads(path)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for bank_id, reported in banks.items():
        if not all(key in reported for key in REPORTED_KEYS):
            continue
        known.setdefault(bank_id, {})[str(reported["ledger_id"])] = {
            "entries": int(reported["ledger_entries"]), "head": str(reported["ledger_head"]),
            "epsilon_lifetime": reported.get("epsilon_lifetime"), "run_id": run_id,
            "updated": now}
    write_private_file(Path(path), json.dumps(known, indent=2, sort_keys=True).encode())
