"""A ledger's anchor: its entry count and head hash, kept outside the ledger file.

A hash chain cannot show that entries were cut off its end, or that the file was
replaced by an older valid copy: both leave a valid, shorter chain, and a bank
reading it would compose a lower lifetime ε. So after every append the bank also
records ``<ledger>.anchor`` beside the ledger (``STATE/ledgers/<fp16>.anchor``):
``{format, count, head, updated}``, written atomically (temporary file, fsync,
rename, fsync of the folder) under the ledger's lock. A ledger with fewer than
``count`` entries, or whose entry ``count - 1`` has another hash than ``head``,
was rolled back, truncated or replaced.

The anchor is evidence against accidents and against whoever edits the ledger
alone; it is not secret and not signed. Rolling back both files together
(restoring the whole state folder from a backup, or rewriting the anchor too) or
deleting both goes unnoticed here: the coordinator's record of the head each bank
last reported catches that (``EgressLedger.check_known_head``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedrisk.files import write_private_file
from fedrisk.privacy.chain import LEDGER_SUFFIX, LedgerEntry, LedgerError

ANCHOR_FORMAT = "fedrisk-ledger-anchor/1"
ANCHOR_SUFFIX = ".anchor"
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_FIELDS = frozenset({"format", "count", "head", "updated"})


@dataclass(frozen=True)
class LedgerAnchor:
    """What a bank last wrote to its ledger, recorded outside the ledger file.

    Attributes:
        count: number of entries the ledger had after the bank's last append.
        head: ``entry_hash`` of entry ``count - 1``, the last one appended.
        updated: UTC ISO-8601 time the anchor was written.

    """

    count: int
    head: str
    updated: str

    def mismatch(self, entries: Sequence[LedgerEntry]) -> tuple[int, str] | None:
        """Where and why ``entries`` (a verified chain) falls short of this anchor, or None.

        Returns the index of the first entry that is missing or differs, and what
        happened, to follow "the ledger" or "ledger <path>". A ledger *longer* than
        its anchor is fine: a bank that crashed between appending and anchoring
        never sent what the entry describes.
        """
        if len(entries) < self.count:
            return len(entries), (
                f"has {len(entries)} entries but its anchor records {self.count} "
                f"(written {self.updated}): entries were cut off or an older copy restored")
        if entries[self.count - 1].entry_hash != self.head:
            return self.count - 1, (
                f"entry {self.count - 1} is not the one its anchor records "
                f"(head {self.head[:16]}, written {self.updated}): the ledger was replaced")
        return None


def anchor_path(ledger_path: Path) -> Path:
    """Where the anchor of the ledger at ``ledger_path`` lives (same folder, ``.anchor``)."""
    return Path(ledger_path).with_suffix(ANCHOR_SUFFIX)


def anchored_ledger_path(path: Path) -> Path:
    """The ledger an anchor file at ``path`` belongs to."""
    return Path(path).with_suffix(LEDGER_SUFFIX)


def read_anchor(path: Path) -> LedgerAnchor | None:
    """Read the anchor file at ``path``; None if there is none.

    Raises:
        LedgerError: the file exists but cannot be read or is not an anchor record.

    """
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read ledger anchor {path}: {_why(exc)}") from None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not _is_anchor_record(record):
        raise LedgerError(f"{path} is not a {ANCHOR_FORMAT} record; restore it together "
                          "with the newest copy of its ledger")
    return LedgerAnchor(record["count"], record["head"], record["updated"])


def write_anchor(path: Path, count: int, head: str) -> LedgerAnchor:
    """Atomically record that the ledger now has ``count`` entries ending with ``head``.

    Raises:
        OSError: the anchor could not be written (e.g. a read-only disk).

    """
    anchor = LedgerAnchor(count, head, datetime.now(UTC).isoformat(timespec="seconds"))
    record = {"format": ANCHOR_FORMAT, "count": count, "head": head, "updated": anchor.updated}
    write_private_file(Path(path), json.dumps(record, sort_keys=True).encode("ascii") + b"\n")
    return anchor


def is_anchor_file(path: Path) -> bool:
    """Whether ``path`` looks like an anchor file (its first bytes name the anchor format)."""
    try:
        with open(path, "rb") as handle:
            return ANCHOR_FORMAT.encode("ascii") in handle.read(4096)
    except OSError:
        return False


def _is_anchor_record(record: object) -> bool:
    if not isinstance(record, dict) or set(record) != _FIELDS:
        return False
    count = record["count"]
    return (record["format"] == ANCHOR_FORMAT
            and isinstance(count, int) and not isinstance(count, bool) and count >= 1
            and isinstance(record["head"], str) and bool(_HASH_RE.fullmatch(record["head"]))
            and isinstance(record["updated"], str))


def _why(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else "not ASCII text"
