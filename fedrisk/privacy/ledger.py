"""A bank's signed, hash-chained, append-only ledger of what left it and what ε it spent.

One ledger file exists per bank and dataset (keyed by the dataset fingerprint)
and persists across runs, so the ``privacy_spend`` entries of all runs compose
into the bank's lifetime privacy loss on that dataset.

File format (``fedrisk-ledger/1``): JSON lines, one entry per line, each line
the canonical JSON (``sort_keys``, ``separators=(",", ":")``, ``ensure_ascii``,
no NaN/Infinity) of ``{index, timestamp, kind, body, prev_hash, entry_hash,
signature}``. The *signed payload* of an entry is the canonical JSON of
``{index, timestamp, kind, body, prev_hash}``:

- ``entry_hash`` = SHA-256 hex of the signed payload;
- ``signature`` = base64 Ed25519 signature over the signed payload bytes
  themselves (not over ``entry_hash``; Ed25519 hashes its message internally);
- ``prev_hash`` = ``entry_hash`` of the previous line, 64 zeros for line 0.

Line 0 is a ``genesis`` entry whose body holds the format, bank id, dataset
fingerprint and the signer's public key (PEM); every entry must verify under
that key.

What verification proves and what it does not:

- Any edit, insertion, removal or reordering of entries before the last one
  breaks the chain and is reported at the first affected line.
- Removing entries from the *end* leaves a valid, shorter chain: a hash chain
  cannot detect truncation. That is why the bank also reports its latest entry
  hash (``EgressLedger.head_hash``) in the run's metrics; an auditor compares it
  with ``VerificationResult.last_hash``.
- Someone holding the bank's private key, or rewriting the whole file under a
  fresh genesis key, produces a valid ledger. Pinning the bank's provisioned
  public key (``verify_ledger(path, public_key)``) defeats the second case.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedrisk.privacy.keys import (
    KeyFileError,
    ensure_private_dir,
    fsync_dir,
    load_or_create_signing_key,
    load_public_key,
    public_key_pem,
)

LEDGER_FORMAT = "fedrisk-ledger/1"
GENESIS_KIND = "genesis"
# privacy_spend: one DP-SGD phase on the training rows; release_spend: another accounted
# release (noisy evaluation histograms of the held-out rows, a noisy published size).
ENTRY_KINDS = frozenset({"privacy_spend", "release_spend", "egress", "blocked", "refusal",
                         "note"})
PRIVACY_SPEND_KEYS = (
    "run_id",
    "round",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "epsilon",
    "delta",
    "accountant",
)
KEY_FILENAME = "signing_key.pem"
LEDGER_DIRNAME = "ledgers"
ZERO_HASH = "0" * 64

_PAYLOAD_KEYS = ("index", "timestamp", "kind", "body", "prev_hash")
_LINE_KEYS = frozenset((*_PAYLOAD_KEYS, "entry_hash", "signature"))
_LINE_TYPES: dict[str, type] = {
    "index": int,
    "timestamp": str,
    "kind": str,
    "body": dict,
    "prev_hash": str,
    "entry_hash": str,
    "signature": str,
}
_FINGERPRINT_RE = re.compile(r"[0-9a-fA-F]{16,}")
_LEDGER_MARKER = f'"format":"{LEDGER_FORMAT}"'.encode("ascii")


class LedgerError(Exception):
    """The ledger cannot be used: broken chain, wrong bank/dataset/key, or a non-JSON body."""


class _ChainBreak(Exception):
    """Internal: the line being checked does not extend the chain; args[0] is the reason."""


@dataclass(frozen=True)
class LedgerEntry:
    """One signed line of the ledger, as an auditor reads it.

    Attributes:
        index: 0-based position in the chain (0 is genesis). Consecutive indices
            prove no entry was inserted, dropped or moved before the last one.
        timestamp: UTC ISO-8601 time of writing as claimed by the bank; signed,
            so it cannot be changed later, but not attested by a third party.
        kind: ``"genesis"`` (index 0 only), ``"privacy_spend"``, ``"egress"``,
            ``"refusal"`` or ``"note"``.
        body: the kind-specific JSON object (see ``egress_body`` and
            ``PRIVACY_SPEND_KEYS``).
        prev_hash: ``entry_hash`` of the previous entry (64 zeros for genesis);
            binds this entry to the whole history before it.
        entry_hash: SHA-256 hex of the signed payload (canonical JSON of
            index, timestamp, kind, body, prev_hash); proves the content.
        signature: base64 Ed25519 signature over the signed payload, verified
            with the public key in genesis; proves the bank's key wrote this content.

    """

    index: int
    timestamp: str
    kind: str
    body: dict[str, Any]
    prev_hash: str
    entry_hash: str
    signature: str

    def signed_payload(self) -> bytes:
        """Return the canonical bytes that ``entry_hash`` digests and ``signature`` signs."""
        return _canonical({key: getattr(self, key) for key in _PAYLOAD_KEYS})

    def to_line(self) -> bytes:
        """Return the entry's canonical JSON line, newline included, as stored on disk."""
        return _canonical({key: getattr(self, key) for key in _LINE_KEYS}) + b"\n"


@dataclass
class VerificationResult:
    """Outcome of verifying one ledger file.

    Attributes:
        ok: every line verified (chain, hashes, signatures, genesis, trusted key).
        entries: number of entries that verified, i.e. the intact prefix.
        first_bad_index: 0-based line number of the first entry that failed,
            ``None`` when ok (or when the file could not be read at all).
        reason: one line saying why that entry failed, ``None`` when ok.
        bank_id: bank named by a verified genesis entry, else ``None``.
        last_epsilon: ε of the last ``privacy_spend`` entry in the intact prefix.
        path: the ledger file.
        dataset_fingerprint: dataset named by a verified genesis entry.
        last_hash: ``entry_hash`` of the last verified entry; compare it with the
            head hash the bank reported in the run's metrics to detect a
            truncated tail, which the chain alone cannot reveal.

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

    def __str__(self) -> str:
        if self.ok:
            eps = "none" if self.last_epsilon is None else f"{self.last_epsilon:.4g}"
            return f"OK   {self.path}: {self.entries} entries, bank {self.bank_id}, last ε {eps}"
        where = "" if self.first_bad_index is None else f" at entry {self.first_bad_index}"
        return f"FAIL {self.path}{where}: {self.reason}"


class _ChainChecker:
    """Verifies lines one by one against the chain so far; adopts the key from genesis."""

    def __init__(self, trusted_key: Ed25519PublicKey | None = None) -> None:
        self.trusted_key = trusted_key
        self.public_key: Ed25519PublicKey | None = None
        self.genesis: LedgerEntry | None = None
        self.next_index = 0
        self.prev_hash = ZERO_HASH

    def check(self, raw: bytes) -> LedgerEntry:
        """Verify one line (without its newline) and advance; raise _ChainBreak otherwise."""
        entry = _parse_line(raw)
        if entry.index != self.next_index:
            raise _ChainBreak(f"index is {entry.index}, expected {self.next_index}")
        if entry.prev_hash != self.prev_hash:
            raise _ChainBreak("prev_hash does not match the previous entry's hash")
        if hashlib.sha256(entry.signed_payload()).hexdigest() != entry.entry_hash:
            raise _ChainBreak("entry_hash does not match the entry's content")
        key = self._genesis_key(entry) if self.next_index == 0 else self._entry_key(entry)
        _verify_signature(key, entry)
        if self.next_index == 0:
            self.public_key, self.genesis = key, entry
        self.next_index += 1
        self.prev_hash = entry.entry_hash
        return entry

    def _genesis_key(self, entry: LedgerEntry) -> Ed25519PublicKey:
        body = entry.body
        if entry.kind != GENESIS_KIND or body.get("format") != LEDGER_FORMAT:
            raise _ChainBreak(f"first entry is not a {LEDGER_FORMAT} genesis entry")
        if not all(isinstance(body.get(k), str) for k in ("bank_id", "dataset_fingerprint")):
            raise _ChainBreak("genesis lacks bank_id or dataset_fingerprint")
        pem = body.get("public_key")
        try:
            # bytes, so a non-PEM value is never mistaken for a file path
            key = load_public_key(pem.encode("ascii") if isinstance(pem, str) else b"")
        except (KeyFileError, UnicodeEncodeError):
            raise _ChainBreak("genesis public_key is not an Ed25519 PEM public key") from None
        if self.trusted_key is not None and _raw(key) != _raw(self.trusted_key):
            raise _ChainBreak("genesis public key differs from the trusted public key")
        return key

    def _entry_key(self, entry: LedgerEntry) -> Ed25519PublicKey:
        if entry.kind not in ENTRY_KINDS:
            raise _ChainBreak(f"unknown entry kind {entry.kind!r}")
        assert self.public_key is not None  # set by genesis, which always comes first
        return self.public_key


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

        A new file is created with mode 0600 (missing parents 0700). An existing
        ledger is fully verified first, then must name the same ``bank_id`` and
        ``dataset_fingerprint`` and carry ``signing_key``'s public key in genesis.

        Raises:
            LedgerError: the chain is broken, or the ledger belongs to another
                bank, dataset or key.

        """
        _require_text(bank_id, "bank_id")
        _require_text(dataset_fingerprint, "dataset_fingerprint")
        self.path = Path(path)
        self.bank_id = bank_id
        self.dataset_fingerprint = dataset_fingerprint
        self._key = signing_key
        self._checker = _ChainChecker()
        self._entries: list[LedgerEntry] = []
        self._offset = 0
        self._create_file_if_absent()
        with self._locked(exclusive=True) as fd:
            self._sync(fd)
            if not self._entries:
                self._write(fd, GENESIS_KIND, self._genesis_body())
        self._check_owner()

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
        ledger is ``state_dir/ledgers/<first 16 hex chars of the fingerprint>.jsonl``.

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
        key = _bank_key(state_dir, key_path)
        path = state_dir / LEDGER_DIRNAME / f"{dataset_fingerprint[:16]}.jsonl"
        return cls(path, key, bank_id, dataset_fingerprint)

    def append(self, kind: str, body: Mapping[str, Any]) -> LedgerEntry:
        """Sign and durably append one entry; return it once it is on disk.

        Under an exclusive ``flock`` the entries other processes appended since
        the last read are verified, then the new line is written and
        ``os.fsync``-ed. Callers append *before* the described message leaves the
        bank (write-ahead), so anything that left has an entry.

        Raises:
            LedgerError: unknown ``kind``; a ``privacy_spend`` body missing
                ``PRIVACY_SPEND_KEYS``; a body that is not strict JSON (NaN,
                infinity, non-string keys, non-JSON values); or a broken chain.

        """
        if kind not in ENTRY_KINDS:
            raise LedgerError(
                f"unknown ledger entry kind {kind!r}; use one of {sorted(ENTRY_KINDS)}"
            )
        if not isinstance(body, Mapping):
            raise LedgerError(f"ledger entry body must be a mapping, got {type(body).__name__}")
        if kind == "privacy_spend":
            _check_privacy_spend(body)
        with self._locked(exclusive=True) as fd:
            self._sync(fd)
            return self._write(fd, kind, dict(body))

    def entries(self) -> list[LedgerEntry]:
        """Return all entries, genesis first, including those appended by other processes.

        New lines are verified (chain and signatures) before being returned.

        Raises:
            LedgerError: a newly read line breaks the chain, or the file shrank.

        """
        with self._locked(exclusive=False) as fd:
            self._sync(fd)
            return list(self._entries)

    @property
    def head_hash(self) -> str:
        """``entry_hash`` of the latest entry: report it in run metrics to pin the ledger's end."""
        return self.entries()[-1].entry_hash

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
            for b in _spend_bodies(self.entries())
            if run_id is None or b["run_id"] == run_id
        ]

    def last_epsilon(self) -> float | None:
        """Return ε of the latest ``privacy_spend`` entry that recorded one, across all runs."""
        return _last_epsilon(self.entries())

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
        if _raw(self._checker.public_key) != _raw(self._key.public_key()):
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
            raise LedgerError(f"ledger {self.path} disappeared while in use") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)  # also releases the flock

    def _sync(self, fd: int) -> None:
        """Verify and cache the lines appended since the last read (caller holds the lock)."""
        size = os.fstat(fd).st_size
        if size < self._offset:
            raise LedgerError(
                f"ledger {self.path} shrank from {self._offset} to {size} bytes while in use"
            )
        data = os.pread(fd, size - self._offset, self._offset)
        entries, consumed, reason = _scan(data, self._checker)
        self._entries.extend(entries)
        self._offset += consumed
        if reason is not None:
            raise LedgerError(
                f"ledger {self.path} is broken at entry {self._checker.next_index}: {reason}; "
                "run verification on it and restore it from a backup"
            )

    def _write(self, fd: int, kind: str, body: dict[str, Any]) -> LedgerEntry:
        """Sign, append and fsync one entry (caller holds the exclusive lock and has synced)."""
        line = _sign_entry(
            self._key, self._checker.next_index, self._checker.prev_hash, kind, body
        ).to_line()
        _write_all(fd, line)
        os.fsync(fd)
        # Re-reading our own line through the checker keeps the cache identical to
        # what another reader parses (tuples become lists, keys are sorted).
        try:
            entry = self._checker.check(line[:-1])
        except _ChainBreak as exc:
            raise LedgerError(f"ledger {self.path}: wrote an unverifiable entry: {exc}") from None
        self._entries.append(entry)
        self._offset += len(line)
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


def verify_ledger(path: Path, public_key: Ed25519PublicKey | None = None) -> VerificationResult:
    """Verify one ledger file and report the first bad entry, if any.

    Checks, line by line: the line is canonical JSON with exactly the entry
    fields; indices run 0, 1, 2, ...; each ``prev_hash`` equals the previous
    ``entry_hash``; ``entry_hash`` matches the content; line 0 is a genesis
    entry; every signature verifies under the genesis public key. If
    ``public_key`` (the bank's trusted, e.g. provisioned, key) is given and
    differs from the genesis key, verification fails at index 0.

    A truncated tail still verifies; compare ``last_hash`` with the head hash
    the bank reported to detect it.
    """
    return _verify(Path(path), public_key)[0]


def verify_path(path: Path) -> list[VerificationResult]:
    """Verify a ledger file, or every ledger below a directory (run dir or state dir).

    In a directory, ``*.jsonl`` files are searched recursively and verified in
    sorted path order. Files inside a ``ledgers/`` directory are always checked;
    other ``*.jsonl`` files only when their first line declares the ledger
    format, so unrelated JSON-lines logs in a run dir are not reported as broken.
    """
    path = Path(path)
    if not path.is_dir():
        return [verify_ledger(path)]
    return [verify_ledger(p) for p in sorted(path.rglob("*.jsonl")) if _is_ledger_file(p)]


def read_ledger(path: Path, public_key: Ed25519PublicKey | None = None) -> list[LedgerEntry]:
    """Return the entries of a ledger without its signing key, after full verification.

    Raises:
        LedgerError: ``verify_ledger`` failed; the message is its one-line reason.

    """
    result, entries = _verify(Path(path), public_key)
    if not result.ok:
        raise LedgerError(str(result))
    return entries


def _verify(
    path: Path, public_key: Ed25519PublicKey | None
) -> tuple[VerificationResult, list[LedgerEntry]]:
    try:
        data = _read_locked(path)
    except OSError as exc:
        reason = f"cannot read ledger: {exc.strerror}"
        return VerificationResult(False, 0, None, reason, None, None, path), []
    checker = _ChainChecker(trusted_key=public_key)
    entries, _, reason = _scan(data, checker)
    if reason is None and not entries:
        reason = "empty ledger: no genesis entry"
    genesis = checker.genesis.body if checker.genesis is not None else {}
    result = VerificationResult(
        ok=reason is None,
        entries=len(entries),
        first_bad_index=None if reason is None else len(entries),
        reason=reason,
        bank_id=genesis.get("bank_id"),
        last_epsilon=_last_epsilon(entries),
        path=path,
        dataset_fingerprint=genesis.get("dataset_fingerprint"),
        last_hash=entries[-1].entry_hash if entries else None,
    )
    return result, entries


def _canonical(obj: Any) -> bytes:
    try:
        text = json.dumps(
            obj,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
            default=_numpy_scalar,
        )
    except (TypeError, ValueError) as exc:
        raise LedgerError(
            f"ledger content must be strict JSON (string keys, no NaN/Infinity): {exc}"
        ) from None
    return text.encode("ascii")


def _numpy_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()  # e.g. steps as np.int64 from an accountant
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_line(raw: bytes) -> LedgerEntry:
    try:
        obj = json.loads(raw.decode("ascii"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise _ChainBreak("line is not valid ASCII JSON") from None
    if not isinstance(obj, dict) or set(obj) != _LINE_KEYS:
        raise _ChainBreak(f"line does not have exactly the fields {sorted(_LINE_KEYS)}")
    for key, expected in _LINE_TYPES.items():
        value = obj[key]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise _ChainBreak(f"field {key} is not a {expected.__name__}")
    entry = LedgerEntry(**obj)
    # Whitespace edits or duplicate keys keep the parsed content but change the bytes.
    if entry.to_line()[:-1] != raw:
        raise _ChainBreak("line is not in canonical form")
    return entry


def _verify_signature(key: Ed25519PublicKey, entry: LedgerEntry) -> None:
    try:
        signature = base64.b64decode(entry.signature, validate=True)
        key.verify(signature, entry.signed_payload())
    except (binascii.Error, InvalidSignature):
        raise _ChainBreak("signature does not verify under the genesis public key") from None


def _sign_entry(
    key: Ed25519PrivateKey, index: int, prev_hash: str, kind: str, body: dict[str, Any]
) -> LedgerEntry:
    timestamp = datetime.now(UTC).isoformat(timespec="microseconds")
    payload = _canonical(
        {"index": index, "timestamp": timestamp, "kind": kind, "body": body, "prev_hash": prev_hash}
    )
    return LedgerEntry(
        index=index,
        timestamp=timestamp,
        kind=kind,
        body=body,
        prev_hash=prev_hash,
        entry_hash=hashlib.sha256(payload).hexdigest(),
        signature=base64.b64encode(key.sign(payload)).decode("ascii"),
    )


def _scan(data: bytes, checker: _ChainChecker) -> tuple[list[LedgerEntry], int, str | None]:
    """Feed complete lines to ``checker``: (verified entries, bytes consumed, first failure)."""
    entries: list[LedgerEntry] = []
    consumed = 0
    *lines, tail = data.split(b"\n")
    for raw in lines:
        try:
            entries.append(checker.check(raw))
        except _ChainBreak as exc:
            return entries, consumed, str(exc)
        consumed += len(raw) + 1
    if tail:
        return entries, consumed, "last line is incomplete (no newline): torn write or truncation"
    return entries, consumed, None


def _read_locked(path: Path) -> bytes:
    with open(path, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)  # never read half of a concurrent append
        return handle.read()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _is_ledger_file(path: Path) -> bool:
    if path.parent.name == LEDGER_DIRNAME:
        return True
    try:
        with open(path, "rb") as handle:
            return _LEDGER_MARKER in handle.readline(1 << 16)
    except OSError:
        return True  # unreadable: let verify_ledger report it rather than hide it


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


def _spend_bodies(entries: list[LedgerEntry]) -> Iterator[dict[str, Any]]:
    return (entry.body for entry in entries if entry.kind == "privacy_spend")


def _last_epsilon(entries: list[LedgerEntry]) -> float | None:
    for body in reversed(list(_spend_bodies(entries))):
        if body.get("epsilon") is not None:
            return float(body["epsilon"])
    return None


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
