"""The ledger's chain format: signed, hash-chained JSON lines, and how one line is checked.

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
that key. Any edit, insertion, removal or reordering of entries before the last
one breaks the chain at the first affected line. Cutting entries off the end, or
restoring an older copy, leaves a valid shorter chain: the anchor
(:mod:`fedrisk.privacy.anchor`) and the head the bank reports reveal that.
Rewriting the whole file under a fresh genesis key also gives a valid chain:
pinning the bank's registered key (:class:`TrustedKeys`) reveals that.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
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

from fedrisk.errors import UserError
from fedrisk.privacy.keys import KeyFileError, load_public_key

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
# scan_lines' reason when every complete line verified and a partial one follows.
TORN_LINE = "last line is incomplete (no newline): torn write or truncation"
LEDGER_DIRNAME = "ledgers"
LEDGER_SUFFIX = ".jsonl"
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


class LedgerError(UserError):
    """The ledger cannot be used: broken chain, wrong bank/dataset/key, or a non-JSON body."""


class LedgerUnwritable(LedgerError):
    """The bank cannot write its ledger or its key (a read-only or full disk).

    Every spend is written before its message leaves (write-ahead), so a bank that
    cannot write refuses the message: nothing is trained, released or sent. The message
    names the path and the OS error.
    """


class LedgerRollback(LedgerError):
    """The ledger is shorter than, or differs from, a head recorded outside it.

    Raised when the ledger does not contain the entry its anchor, or the coordinator's
    record of the bank's last report, names: entries were cut off, an older copy was
    restored or the file was deleted. A bank that carried on would undercount its ε.
    """


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
        kind: ``"genesis"`` (index 0 only) or one of ``ENTRY_KINDS``.
        body: the kind-specific JSON object (see
            :func:`fedrisk.privacy.ledger.egress_body` and ``PRIVACY_SPEND_KEYS``).
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
        return canonical_json({key: getattr(self, key) for key in _PAYLOAD_KEYS})

    def to_line(self) -> bytes:
        """Return the entry's canonical JSON line, newline included, as stored on disk."""
        return canonical_json({key: getattr(self, key) for key in _LINE_KEYS}) + b"\n"


@dataclass(frozen=True)
class TrustedKeys:
    """The Ed25519 public keys an auditor pins ledgers to (registered when provisioning).

    Privacy meaning: a ledger proves what left a bank and what ε it spent only if
    that bank's registered key signed it; anyone can write a self-consistent ledger
    under a fresh key. With pinning, a ledger whose genesis key differs from its
    bank's registered key, or whose bank has no registered key, fails verification.

    Attributes:
        by_bank: bank id -> the bank's registered public key (a consortium's
            ``coordinator/ledger-keys/<bank>.pem``).
        every_bank: one key every ledger must carry, whatever its bank
            (``--trusted-key FILE``: verifying one bank's ledgers).

    """

    by_bank: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    every_bank: Ed25519PublicKey | None = None

    @classmethod
    def from_file(cls, path: Path) -> TrustedKeys:
        """Pin every ledger to the one PEM public key in ``path``.

        Raises:
            KeyFileError: the file is missing or not an Ed25519 public key.

        """
        return cls(every_bank=load_public_key(Path(path)))

    @classmethod
    def from_dir(cls, path: Path) -> TrustedKeys:
        """Pin each bank's ledgers to ``path/<bank>.pem`` (a consortium's ``ledger-keys/``).

        Raises:
            KeyFileError: ``path`` is not a directory, holds no ``*.pem`` file, or
                one of them is not an Ed25519 public key.

        """
        path = Path(path)
        if not path.is_dir():
            raise KeyFileError(f"trusted keys {path}: not a directory of <bank>.pem files")
        keys = {pem.stem: load_public_key(pem) for pem in sorted(path.glob("*.pem"))}
        if not keys:
            raise KeyFileError(f"trusted keys {path}: no <bank>.pem public key in it "
                               "(a consortium keeps them in coordinator/ledger-keys/)")
        return cls(by_bank=keys)

    def key_for(self, bank_id: str) -> Ed25519PublicKey | None:
        """The key ``bank_id``'s ledgers must carry, or None if the bank has none registered."""
        return self.every_bank if self.every_bank is not None else self.by_bank.get(bank_id)


class ChainChecker:
    """Verifies lines one by one against the chain so far; adopts the key from genesis."""

    def __init__(self, trusted: TrustedKeys | None = None) -> None:
        """Start before genesis; with ``trusted``, genesis must carry the bank's pinned key."""
        self.trusted = trusted
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
        if self.trusted is not None:
            pinned = self.trusted.key_for(body["bank_id"])
            if pinned is None:
                raise _ChainBreak(f"bank {body['bank_id']!r} has no registered signing key "
                                  "among the trusted keys")
            if public_key_bytes(key) != public_key_bytes(pinned):
                raise _ChainBreak("genesis public key differs from the trusted public key")
        return key

    def _entry_key(self, entry: LedgerEntry) -> Ed25519PublicKey:
        if entry.kind not in ENTRY_KINDS:
            raise _ChainBreak(f"unknown entry kind {entry.kind!r}")
        assert self.public_key is not None  # set by genesis, which always comes first
        return self.public_key


def scan_lines(data: bytes, checker: ChainChecker) -> tuple[list[LedgerEntry], int, str | None]:
    """Feed complete lines to ``checker``: (verified entries, bytes consumed, first failure).

    The failure (None if every line verified) is one line of text; the entry it
    concerns is ``checker.next_index``.
    """
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
        return entries, consumed, TORN_LINE
    return entries, consumed, None


def sign_entry(
    key: Ed25519PrivateKey, index: int, prev_hash: str, kind: str, body: dict[str, Any]
) -> LedgerEntry:
    """Timestamp, hash and sign a new entry that extends a chain at ``index``."""
    timestamp = datetime.now(UTC).isoformat(timespec="microseconds")
    payload = canonical_json(
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


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (sorted keys, no spaces, ASCII, no NaN/Infinity).

    Raises:
        LedgerError: ``obj`` is not strict JSON (non-string keys, NaN, infinity, ...).

    """
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


def read_locked(path: Path) -> bytes:
    """The ledger file's bytes, read under a shared ``flock`` (never half of an append)."""
    with open(path, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        return handle.read()


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of an Ed25519 public key, to compare two keys."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def spend_bodies(entries: list[LedgerEntry]) -> Iterator[dict[str, Any]]:
    """Bodies of the ``privacy_spend`` entries, in ledger order."""
    return (entry.body for entry in entries if entry.kind == "privacy_spend")


def last_epsilon(entries: list[LedgerEntry]) -> float | None:
    """ε of the latest ``privacy_spend`` entry that recorded one, or None."""
    for body in reversed(list(spend_bodies(entries))):
        if body.get("epsilon") is not None:
            return float(body["epsilon"])
    return None


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
