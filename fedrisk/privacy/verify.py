"""Verify a bank's ledger without its signing key: chain, signatures, pinned key, anchor.

What verification proves and what it does not:

- Any edit, insertion, removal or reordering of entries before the last one
  breaks the chain and is reported at the first affected line.
- Entries cut off the end, or an older copy restored, are reported when the
  ledger's anchor (``<ledger>.anchor``, beside it) records more entries or another
  head. Without the anchor (a copied ledger file, or both rolled back together),
  compare ``VerificationResult.last_hash`` with the head the bank reported in the
  run's metrics.
- A ledger rewritten under a fresh genesis key is self-consistent: pin the
  bank's registered public key (:class:`~fedrisk.privacy.chain.TrustedKeys`).
- Someone holding the bank's private key can write a valid ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedrisk.privacy.anchor import (
    anchor_path,
    anchored_ledger_path,
    is_anchor_file,
    read_anchor,
)
from fedrisk.privacy.chain import (
    LEDGER_DIRNAME,
    LEDGER_FORMAT,
    ChainChecker,
    LedgerEntry,
    LedgerError,
    TrustedKeys,
    last_epsilon,
    read_locked,
    scan_lines,
)

_LEDGER_MARKER = f'"format":"{LEDGER_FORMAT}"'.encode("ascii")


@dataclass
class VerificationResult:
    """Outcome of verifying one ledger file.

    Attributes:
        ok: every line verified (chain, hashes, signatures, genesis, trusted key)
            and the ledger holds what its anchor records.
        entries: number of entries that verified, i.e. the intact prefix.
        first_bad_index: 0-based index of the first entry that failed or is
            missing, ``None`` when ok (or when the file could not be read at all).
        reason: one line saying why that entry failed, ``None`` when ok.
        bank_id: bank named by a verified genesis entry, else ``None``.
        last_epsilon: ε of the last ``privacy_spend`` entry in the intact prefix.
        path: the ledger file.
        dataset_fingerprint: dataset named by a verified genesis entry.
        last_hash: ``entry_hash`` of the last verified entry; compare it with the
            head hash the bank reported in the run's metrics.
        anchored: whether an anchor file was found beside the ledger and checked.

    """

    ok: bool
    entries: int
    first_bad_index: int | None
    reason: str | None
    bank_id: str | None
    last_epsilon: float | None
    path: Path
    dataset_fingerprint: str | None = None
    last_hash: str | None = None
    anchored: bool = False

    def __str__(self) -> str:
        if self.ok:
            eps = "none" if self.last_epsilon is None else f"{self.last_epsilon:.4g}"
            return f"OK   {self.path}: {self.entries} entries, bank {self.bank_id}, last ε {eps}"
        where = "" if self.first_bad_index is None else f" at entry {self.first_bad_index}"
        return f"FAIL {self.path}{where}: {self.reason}"


def verify_ledger(path: Path, trusted: TrustedKeys | None = None) -> VerificationResult:
    """Verify one ledger file and report the first bad entry, if any.

    Checks, line by line: the line is canonical JSON with exactly the entry
    fields; indices run 0, 1, 2, ...; each ``prev_hash`` equals the previous
    ``entry_hash``; ``entry_hash`` matches the content; line 0 is a genesis
    entry; every signature verifies under the genesis public key. With
    ``trusted``, the genesis key must be the bank's pinned key (fails at index 0
    otherwise, also when the bank has no registered key). Then, if the ledger has
    an anchor beside it, the ledger must hold the anchor's entry count and head.
    """
    return _verify(Path(path), trusted)[0]


def verify_path(path: Path, trusted: TrustedKeys | None = None) -> list[VerificationResult]:
    """Verify a ledger file, or every ledger below a directory (run dir or state dir).

    In a directory, ``*.jsonl`` files are searched recursively and verified in
    sorted path order. Files inside a ``ledgers/`` directory are always checked;
    other ``*.jsonl`` files only when their first line declares the ledger
    format, so unrelated JSON-lines logs in a run dir are not reported as broken.
    An anchor whose ledger is gone is reported as a failed (deleted) ledger.
    """
    path = Path(path)
    if not path.is_dir():
        return [verify_ledger(path, trusted)]
    ledgers = {p for p in path.rglob("*.jsonl") if _is_ledger_file(p)}
    ledgers |= {anchored_ledger_path(a) for a in path.rglob("*.anchor") if is_anchor_file(a)}
    return [verify_ledger(p, trusted) for p in sorted(ledgers)]


def read_ledger(path: Path, trusted: TrustedKeys | None = None) -> list[LedgerEntry]:
    """Return the entries of a ledger without its signing key, after full verification.

    Raises:
        LedgerError: ``verify_ledger`` failed; the message is its one-line reason.

    """
    result, entries = _verify(Path(path), trusted)
    if not result.ok:
        raise LedgerError(str(result))
    return entries


def _verify(path: Path, trusted: TrustedKeys | None
            ) -> tuple[VerificationResult, list[LedgerEntry]]:
    try:
        anchor = read_anchor(anchor_path(path))
    except LedgerError as error:
        return VerificationResult(False, 0, None, str(error), None, None, path), []
    try:
        data = read_locked(path)
    except OSError as exc:
        reason = f"cannot read ledger: {exc.strerror}"
        if anchor is not None and isinstance(exc, FileNotFoundError):
            reason = (f"the ledger is missing but its anchor records {anchor.count} entries "
                      f"(written {anchor.updated}): it was deleted")
        return VerificationResult(False, 0, None, reason, None, None, path), []
    checker = ChainChecker(trusted)
    entries, _, reason = scan_lines(data, checker)
    first_bad = None if reason is None else len(entries)
    mismatch = anchor.mismatch(entries) if reason is None and anchor is not None else None
    if mismatch is not None:
        first_bad, reason = mismatch[0], f"the ledger {mismatch[1]}"
    if reason is None and not entries:
        reason, first_bad = "empty ledger: no genesis entry", 0
    genesis = checker.genesis.body if checker.genesis is not None else {}
    result = VerificationResult(
        ok=reason is None,
        entries=len(entries),
        first_bad_index=first_bad,
        reason=reason,
        bank_id=genesis.get("bank_id"),
        last_epsilon=last_epsilon(entries),
        path=path,
        dataset_fingerprint=genesis.get("dataset_fingerprint"),
        last_hash=entries[-1].entry_hash if entries else None,
        anchored=anchor is not None,
    )
    return result, entries


def _is_ledger_file(path: Path) -> bool:
    if path.parent.name == LEDGER_DIRNAME:
        return True
    try:
        with open(path, "rb") as handle:
            return _LEDGER_MARKER in handle.readline(1 << 16)
    except OSError:
        return True  # unreadable: let verify_ledger report it rather than hide it
