"""A bank's signed, hash-chained, append-only ledger of what left it and what ε it spent.

One ledger file exists per bank and dataset (keyed by the dataset fingerprint)
and persists across runs, so the ``privacy_spend`` entries of all runs compose
into the bank's lifetime privacy loss on that dataset. The line format is in
:mod:`fedrisk.privacy.chain`, verification without the key in
:mod:`fedrisk.privacy.verify`.

A rolled-back ledger would lower the bank's lifetime ε, so the bank refuses to use
one (:class:`~fedrisk.privacy.chain.LedgerRollback`):

- after every append it records the ledger's entry count and head hash in the
  anchor beside it (:mod:`fedrisk.privacy.anchor`), and every time it opens or
  reads the ledger it checks the ledger still holds them: a truncated ledger, an
  older copy, or a deleted ledger whose anchor remains, stops the bank;
- a ledger found without an anchor (written before anchors existed, or whose
  anchor was deleted) gets one, and a signed ``note`` entry records when;
- ledger and anchor deleted or rolled back together cannot be seen on the bank's
  disk: :meth:`EgressLedger.check_known_head` compares the ledger with the head
  the coordinator last recorded for the bank.

A bank that crashed in the middle of an append leaves a partial last line (no
newline). The line is written and fsynced before its message leaves and the anchor
moves only after it, so a partial line right after the anchored head describes
something that never left: the bank moves its bytes into a sidecar file beside the
ledger (``<fp16>.torn-at-<offset>.partial``, kept as evidence), signs a ``note`` saying
so and carries on. A partial line anywhere else (after a missing or unanchored entry,
or with no anchor) stays an error.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrisk.files import PRIVATE_FILE_MODE, ensure_private_dir, fsync_dir, write_file_with_mode
from fedrisk.privacy.anchor import LedgerAnchor, anchor_path, read_anchor, write_anchor
from fedrisk.privacy.chain import (
    ENTRY_KINDS,
    GENESIS_KIND,
    LEDGER_DIRNAME,
    LEDGER_FORMAT,
    LEDGER_SUFFIX,
    PRIVACY_SPEND_KEYS,
    TORN_LINE,
    ChainChecker,
    LedgerEntry,
    LedgerError,
    LedgerRollback,
    LedgerUnwritable,
    last_epsilon,
    public_key_bytes,
    scan_lines,
    sign_entry,
    spend_bodies,
)
from fedrisk.privacy.keys import (
    KeyFileError,
    load_or_create_signing_key,
    public_key_pem,
)

KEY_FILENAME = "signing_key.pem"
# How to resolve a rollback: said in every LedgerRollback message.
ROLLBACK_ADVICE = (
    "restore the newest copy of the ledger (never an older backup) and check it with "
    "`fedrisk audit verify`; if it is lost, this table's privacy history is lost with it: "
    "retire the table or set its lifetime budget as spent"
)
# How to resolve a ledger damaged in place: an older backup would drop privacy spends.
DAMAGE_ADVICE = (
    "check it with `fedrisk audit verify` and keep the file as it is; only the newest copy "
    "of this ledger may replace it (never an older backup: it drops privacy spends); if "
    "there is none, this table's privacy history is lost: retire the table or set its "
    "lifetime budget as spent"
)
TORN_NOTE_EVENT = "torn line set aside"
TORN_SUFFIX = ".partial"
log = logging.getLogger("fedrisk.ledger")
_FINGERPRINT_RE = re.compile(r"[0-9a-fA-F]{16,}")
_HASH_RE = re.compile(r"[0-9a-f]{64}")


class EgressLedger:
    """Append-only signed ledger of one bank on one dataset, shared safely between processes."""

    def __init__(
        self,
        path: Path,
        signing_key: Ed25519PrivateKey,
        bank_id: str,
        dataset_fingerprint: str,
    ) -> None:
        """Open the ledger at ``path``, creating it with a signed genesis entry if absent.

        A new file is created with mode 0600 (missing parents 0700), with its anchor
        beside it. An existing ledger is fully verified first, must hold what its
        anchor records, then must name the same ``bank_id`` and
        ``dataset_fingerprint`` and carry ``signing_key``'s public key in genesis.

        Raises:
            LedgerRollback: the ledger is shorter than its anchor, differs from it,
                or is missing or empty while its anchor exists.
            LedgerError: the chain is broken, the ledger belongs to another bank,
                dataset or key.
            LedgerUnwritable: the ledger or its anchor cannot be written (a read-only
                or full disk); the message names the path and the OS error.

        """
        _require_text(bank_id, "bank_id")
        _require_text(dataset_fingerprint, "dataset_fingerprint")
        self.path = Path(path)
        self.anchor_path = anchor_path(self.path)
        self.bank_id = bank_id
        self.dataset_fingerprint = dataset_fingerprint
        self._key = signing_key
        self._checker = ChainChecker()
        self._entries: list[LedgerEntry] = []
        self._offset = 0
        try:
            self._create_file_if_absent()
            with self._locked(exclusive=True) as fd:
                self._sync(fd, repair=True)
                if not self._entries:
                    self._write(fd, GENESIS_KIND, self._genesis_body())
                self._check_owner()
                anchor = read_anchor(self.anchor_path)
                if anchor is None:
                    self._write(fd, "note", {
                        "event": "anchor created", "entries": len(self._entries),
                        "reason": "no anchor beside the ledger (first use of anchoring, or "
                                  "the anchor was deleted)"})
                elif anchor.count < len(self._entries):  # stopped between a line and anchor
                    write_anchor(self.anchor_path, len(self._entries),
                                 self._entries[-1].entry_hash)
        except OSError as exc:
            raise unwritable(exc, self.path) from None

    @classmethod
    def for_bank(
        cls,
        state_dir: Path,
        bank_id: str,
        dataset_fingerprint: str,
        key_path: Path | None = None,
    ) -> EgressLedger:
        """Open the ledger of ``bank_id`` on a dataset under the bank's state directory.

        The key is ``state_dir/signing_key.pem`` (created on first use) unless
        ``key_path`` names a provisioned key, which must then already exist. The
        ledger is ``state_dir/ledgers/<first 16 hex chars of the fingerprint>.jsonl``,
        its anchor the ``.anchor`` file of the same name.

        Raises:
            LedgerError: the fingerprint is not a hex string of 16+ characters,
                or opening the ledger failed (see ``__init__``).
            KeyFileError: the key file is unusable or a provisioned key is missing.

        """
        if not isinstance(dataset_fingerprint, str) or not _FINGERPRINT_RE.fullmatch(
            dataset_fingerprint
        ):
            raise LedgerError(
                f"dataset fingerprint must be a hex string of 16+ characters, "
                f"got {dataset_fingerprint!r}"
            )
        state_dir = Path(state_dir)
        try:
            key = _bank_key(state_dir, key_path)
        except OSError as exc:
            raise unwritable(exc, state_dir / KEY_FILENAME) from None
        path = state_dir / LEDGER_DIRNAME / f"{dataset_fingerprint[:16]}{LEDGER_SUFFIX}"
        return cls(path, key, bank_id, dataset_fingerprint)

    def append(self, kind: str, body: Mapping[str, Any]) -> LedgerEntry:
        """Sign and durably append one entry, then anchor it; return it once both are on disk.

        Under an exclusive ``flock`` the entries other processes appended since
        the last read are verified and checked against the anchor, then the new
        line is written and ``os.fsync``-ed, then the anchor is rewritten.
        Callers append *before* the described message leaves the bank
        (write-ahead): if this raises, the message must not be sent.

        Raises:
            LedgerError: unknown ``kind``; a ``privacy_spend`` body missing
                ``PRIVACY_SPEND_KEYS``; a body that is not strict JSON (NaN,
                infinity, non-string keys, non-JSON values); a broken chain.
            LedgerUnwritable: the line or its anchor cannot be written (a read-only
                or full disk; an entry whose anchor failed is in the ledger but must be
                treated as not sent).
            LedgerRollback: the ledger no longer holds what its anchor records.

        """
        if kind not in ENTRY_KINDS:
            raise LedgerError(
                f"unknown ledger entry kind {kind!r}; use one of {sorted(ENTRY_KINDS)}"
            )
        if not isinstance(body, Mapping):
            raise LedgerError(f"ledger entry body must be a mapping, got {type(body).__name__}")
        if kind == "privacy_spend":
            _check_privacy_spend(body)
        try:
            with self._locked(exclusive=True) as fd:
                self._sync(fd, repair=True)
                return self._write(fd, kind, dict(body))
        except OSError as exc:
            raise unwritable(exc, self.path) from None

    def entries(self) -> list[LedgerEntry]:
        """Return all entries, genesis first, including those appended by other processes.

        New lines are verified (chain and signatures) and the ledger is checked
        against its anchor before anything is returned.

        Raises:
            LedgerError: a newly read line breaks the chain.
            LedgerRollback: the file shrank, vanished, or no longer holds what its
                anchor records.

        """
        try:
            with self._locked(exclusive=False) as fd:
                self._sync(fd, repair=False)
                return list(self._entries)
        except _TornLine:  # setting a torn line aside writes: under the exclusive lock
            with self._locked(exclusive=True) as fd:
                self._sync(fd, repair=True)
                return list(self._entries)

    @property
    def head_hash(self) -> str:
        """``entry_hash`` of the latest entry: report it in run metrics to pin the ledger's end."""
        return self.entries()[-1].entry_hash

    @property
    def entry_count(self) -> int:
        """Number of entries, genesis included: report it with ``head_hash``."""
        return len(self.entries())

    @property
    def ledger_id(self) -> str:
        """A public name of this ledger (bank and table) for the coordinator's record.

        Derived one-way from the dataset fingerprint, so the coordinator can tell a
        deleted ledger (same table, fresh genesis) from a new table without learning
        anything about the rows.
        """
        digest = hashlib.sha256(f"fedrisk-ledger-id:{self.dataset_fingerprint}".encode())
        return digest.hexdigest()[:16]

    def check_known_head(self, entries: int, head: str) -> None:
        """Refuse a ledger that lacks the head someone outside the bank last saw.

        ``entries`` and ``head`` are an (``entry_count``, ``head_hash``) pair the bank
        reported earlier, as the coordinator's run record keeps it. The ledger must
        still hold entry ``entries - 1`` with hash ``head``. This catches what the
        anchor cannot: ledger and anchor deleted together (a fresh genesis) or both
        restored from an older backup.

        Raises:
            LedgerRollback: the ledger is shorter than ``entries`` or its entry
                ``entries - 1`` has another hash; one line saying how to resolve it.
            LedgerError: ``entries`` is not a positive int or ``head`` not a SHA-256 hex.

        """
        if not isinstance(entries, int) or isinstance(entries, bool) or entries < 1:
            raise LedgerError(f"known ledger entry count must be a positive int, got {entries!r}")
        if not isinstance(head, str) or not _HASH_RE.fullmatch(head):
            raise LedgerError(f"known ledger head must be a SHA-256 hex string, got {head!r}")
        current = self.entries()
        if len(current) < entries:
            raise LedgerRollback(
                f"ledger {self.path} has {len(current)} entries but this bank last reported "
                f"{entries} (head {head[:16]}): the ledger was rolled back, truncated or "
                f"deleted; {ROLLBACK_ADVICE}")
        if current[entries - 1].entry_hash != head:
            raise LedgerRollback(
                f"ledger {self.path} entry {entries - 1} is not the head this bank last "
                f"reported ({head[:16]}): the ledger was replaced; {ROLLBACK_ADVICE}")

    def privacy_history(self, run_id: str | None = None) -> list[tuple[float, float, int]]:
        """Return the Opacus accountant history recorded in ``privacy_spend`` entries.

        Each tuple is ``(noise_multiplier, sample_rate, steps)`` for one round, in
        ledger order, ``steps`` being the DP-SGD steps of that round. Feeding all
        of them to a fresh accountant (``accountant.history = ...``) recomputes
        the composed ε. With ``run_id=None`` every run on this dataset is
        included (the bank's lifetime spend); otherwise only that run.
        """
        return [
            (float(b["noise_multiplier"]), float(b["sample_rate"]), int(b["steps"]))
            for b in spend_bodies(self.entries())
            if run_id is None or b["run_id"] == run_id
        ]

    def last_epsilon(self) -> float | None:
        """Return ε of the latest ``privacy_spend`` entry that recorded one, across all runs."""
        return last_epsilon(self.entries())

    def _genesis_body(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "bank_id": self.bank_id,
            "dataset_fingerprint": self.dataset_fingerprint,
            "public_key": public_key_pem(self._key),
        }

    def _check_owner(self) -> None:
        genesis = self._checker.genesis
        assert genesis is not None and self._checker.public_key is not None
        for field, expected in (
            ("bank_id", self.bank_id),
            ("dataset_fingerprint", self.dataset_fingerprint),
        ):
            if genesis.body[field] != expected:
                raise LedgerError(
                    f"ledger {self.path} belongs to {field} {genesis.body[field]!r}, "
                    f"not {expected!r}; use that bank's state dir or another ledger path"
                )
        if public_key_bytes(self._checker.public_key) != public_key_bytes(self._key.public_key()):
            raise LedgerError(
                f"ledger {self.path} was started with a different signing key; "
                "use the bank's original key or a new state dir"
            )

    def _create_file_if_absent(self) -> None:
        ensure_private_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        fsync_dir(self.path.parent)

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[int]:
        flags = (os.O_RDWR | os.O_APPEND) if exclusive else os.O_RDONLY
        try:
            fd = os.open(self.path, flags | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LedgerRollback(
                f"ledger {self.path} was deleted while in use; {ROLLBACK_ADVICE}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)  # also releases the flock

    def _sync(self, fd: int, *, repair: bool) -> None:
        """Verify and cache new lines, then check the anchor (caller holds the lock).

        With ``repair`` (the exclusive lock), a torn last line right after the anchored
        head is set aside; without it, such a line raises ``_TornLine``.
        """
        size = os.fstat(fd).st_size
        if size < self._offset:
            raise LedgerRollback(
                f"ledger {self.path} shrank from {self._offset} to {size} bytes while in use: "
                f"it was truncated or an older copy restored; {ROLLBACK_ADVICE}")
        data = os.pread(fd, size - self._offset, self._offset)
        entries, consumed, reason = scan_lines(data, self._checker)
        self._entries.extend(entries)
        self._offset += consumed
        anchor = read_anchor(self.anchor_path)
        if reason == TORN_LINE:
            self._check_torn_line(anchor, len(data) - consumed)
            if not repair:
                raise _TornLine
            self._set_torn_line_aside(fd, data[consumed:])
        elif reason is not None:
            raise LedgerError(
                f"ledger {self.path} is broken at entry {self._checker.next_index}: {reason}; "
                f"{DAMAGE_ADVICE}")
        mismatch = anchor.mismatch(self._entries) if anchor is not None else None
        if mismatch is not None:
            raise LedgerRollback(f"ledger {self.path} {mismatch[1]}; {ROLLBACK_ADVICE}")

    def _check_torn_line(self, anchor: LedgerAnchor | None, size: int) -> None:
        """Refuse a partial last line unless it directly follows the anchored head."""
        torn = f"ledger {self.path} ends with a partial last line ({size} bytes, a torn write)"
        if anchor is None:
            raise LedgerError(f"{torn} and has no anchor to show that no complete line is "
                              f"missing before it; {DAMAGE_ADVICE}")
        mismatch = anchor.mismatch(self._entries)
        if mismatch is not None:
            raise LedgerRollback(f"{torn}, and {mismatch[1]}; {ROLLBACK_ADVICE}")
        if len(self._entries) != anchor.count:
            raise LedgerError(
                f"{torn} that does not follow the anchored head (entry {anchor.count - 1}; "
                f"{len(self._entries) - anchor.count} complete entries were never anchored); "
                f"{DAMAGE_ADVICE}")

    def _set_torn_line_aside(self, fd: int, partial: bytes) -> None:
        """Move a torn last line into a sidecar file, cut it off and sign a note saying so.

        The sidecar is written and fsynced before the ledger is cut, so the bytes are
        never lost; the line described a message that never left (write-ahead).
        """
        sidecar = _new_sidecar(self.path, self._offset, partial)
        os.ftruncate(fd, self._offset)
        os.fsync(fd)
        log.warning("ledger %s: a torn last line (%d bytes, an interrupted append) was moved "
                    "to %s", self.path, len(partial), sidecar)
        self._write(fd, "note", {
            "event": TORN_NOTE_EVENT, "after_entry": len(self._entries) - 1,
            "offset": self._offset, "bytes": len(partial),
            "sha256": hashlib.sha256(partial).hexdigest(), "sidecar": sidecar.name,
            "reason": "a partial last line right after the anchored head: an append "
                      "interrupted before its message could leave"})

    def _write(self, fd: int, kind: str, body: dict[str, Any]) -> LedgerEntry:
        """Sign, append, fsync and anchor one entry (caller holds the lock and has synced)."""
        line = sign_entry(
            self._key, self._checker.next_index, self._checker.prev_hash, kind, body
        ).to_line()
        _write_all(fd, line)
        os.fsync(fd)
        # Re-reading our own line through the checker keeps the cache identical to
        # what another reader parses (tuples become lists, keys are sorted).
        written, _, reason = scan_lines(line, self._checker)
        if reason is not None:
            raise LedgerError(f"ledger {self.path}: wrote an unverifiable entry: {reason}")
        entry = written[0]
        self._entries.append(entry)
        self._offset += len(line)
        try:
            write_anchor(self.anchor_path, len(self._entries), entry.entry_hash)
        except OSError as exc:
            raise LedgerUnwritable(
                f"cannot write the ledger anchor {self.anchor_path} ({exc.strerror}): entry "
                f"{entry.index} is in the ledger but must be treated as not sent; make the "
                "bank's state dir writable") from None
        return entry


def egress_body(
    *,
    run_id: str,
    round: int,
    message_kind: str,
    arrays: Mapping[str, np.ndarray],
    metrics: Mapping[str, float | int | str],
    epsilon: float | None,
    secure_aggregation: bool,
) -> dict[str, Any]:
    """Build the body of an ``"egress"`` entry describing one message sent to the coordinator.

    Fields and what they let an auditor check:

    - ``run_id``, ``round``, ``message_kind``: which message of which run this is.
    - ``arrays``: one object per array, in message order, with ``name``,
      ``dtype`` (numpy ``dtype.str``, e.g. ``"<f4"``, byte order included),
      ``shape``, ``nbytes`` and ``sha256`` of the array's C-contiguous bytes.
      Recomputing these on a captured message proves exactly which arrays left.
    - ``total_bytes``: sum of ``nbytes``, the volume of array data that left.
    - ``metrics``: every metric key and value sent. Non-finite floats are stored
      as the strings ``"nan"``, ``"inf"``, ``"-inf"``; numpy scalars as Python values.
    - ``epsilon``: the bank's ε after this round (``None`` without DP).
    - ``secure_aggregation``: whether the arrays were masked by SecAgg, i.e.
      whether the coordinator could see them individually.

    Raises:
        LedgerError: an array has an object dtype or a metric has a non-string
            key or an unsupported value type.

    """
    described = [_describe_array(name, value) for name, value in arrays.items()]
    return {
        "run_id": run_id,
        "round": int(round),
        "message_kind": message_kind,
        "arrays": described,
        "total_bytes": sum(item["nbytes"] for item in described),
        "metrics": {_metric_key(key): _json_value(key, value) for key, value in metrics.items()},
        "epsilon": None if epsilon is None else _json_value("epsilon", float(epsilon)),
        "secure_aggregation": bool(secure_aggregation),
    }


class _TornLine(Exception):
    """Internal: a torn last line was found under a shared lock; retry under the exclusive one."""


def _new_sidecar(ledger_path: Path, offset: int, data: bytes) -> Path:
    """Write ``data`` to a new owner-only file beside the ledger (never over an older one)."""
    for attempt in range(1000):
        name = f"{ledger_path.stem}.torn-at-{offset}" + (f"-{attempt}" if attempt else "")
        path = ledger_path.with_name(name + TORN_SUFFIX)
        try:
            write_file_with_mode(path, data, PRIVATE_FILE_MODE, exclusive=True)
        except FileExistsError:
            continue
        fsync_dir(path.parent)
        return path
    raise LedgerError(f"ledger {ledger_path}: too many torn-line files beside it; move them "
                      "somewhere safe and restart the bank")


def unwritable(exc: OSError, path: Path) -> LedgerUnwritable:
    """The one-line error of a ledger (or key) the bank cannot write: the path and OS error."""
    where = exc.filename or path
    return LedgerUnwritable(f"cannot write the bank's ledger or key at {where}: "
                            f"[Errno {exc.errno}] {exc.strerror}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _bank_key(state_dir: Path, key_path: Path | None) -> Ed25519PrivateKey:
    if key_path is None:
        return load_or_create_signing_key(state_dir / KEY_FILENAME)
    key_path = Path(key_path)
    if not key_path.exists():
        raise KeyFileError(
            f"provisioned signing key {key_path} does not exist; provision it or omit key_path"
        )
    return load_or_create_signing_key(key_path)


def _require_text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise LedgerError(f"{name} must be a non-empty string, got {value!r}")


def _check_privacy_spend(body: Mapping[str, Any]) -> None:
    missing = [key for key in PRIVACY_SPEND_KEYS if key not in body]
    if missing:
        raise LedgerError(f"privacy_spend body lacks {missing}")
    for key in ("noise_multiplier", "sample_rate"):
        if not _is_number(body[key]) or body[key] < 0:
            raise LedgerError(
                f"privacy_spend {key} must be a non-negative number, got {body[key]!r}"
            )
    steps = body["steps"]
    if not isinstance(steps, int | np.integer) or isinstance(steps, bool) or steps < 0:
        raise LedgerError(f"privacy_spend steps must be a non-negative int, got {steps!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _describe_array(name: str, value: np.ndarray) -> dict[str, Any]:
    if not isinstance(name, str):
        raise LedgerError(f"array names must be strings, got {name!r}")
    array = np.asarray(value, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    if array.dtype.hasobject:
        raise LedgerError(f"array {name!r} has an object dtype; its bytes cannot be hashed")
    return {
        "name": name,
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "nbytes": int(array.nbytes),
        "sha256": hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest(),
    }


def _metric_key(key: object) -> str:
    if not isinstance(key, str):
        raise LedgerError(f"metric keys must be strings, got {key!r}")
    return key


def _json_value(key: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, list | tuple):
        return [_json_value(key, item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bool | int | str):
        return value
    raise LedgerError(f"metric {key!r} has unsupported type {type(value).__name__}")


KNOWN_HEAD_PREFIX = "known-ledger-head:"


def known_head_key(bank_id: str, ledger_id: str) -> str:
    """Config key under which the coordinator sends a bank the head it last reported."""
    return f"{KNOWN_HEAD_PREFIX}{bank_id}:{ledger_id}"


def known_head_value(entries: int, head: str) -> str:
    """``"<entries>:<head>"``: what :meth:`EgressLedger.check_known_head` checks."""
    return f"{int(entries)}:{head}"


def parse_known_head(value: object) -> tuple[int, str]:
    """Inverse of :func:`known_head_value`; raises :class:`LedgerError` on anything else."""
    entries, _, head = str(value).partition(":")
    if not entries.isdigit() or not head:
        raise LedgerError(f"known ledger head must be '<entries>:<sha256>', got {value!r}")
    return int(entries), head
