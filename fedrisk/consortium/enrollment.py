"""A bank's public bundle: what a bank sends the coordinator to join, and nothing more.

The bank makes its keys on its own host (``fedrisk consortium bank-init``) and sends
the coordinator only ``public-bundle.json``::

    {"format": "fedrisk-bank-bundle/1",
     "bank_id": "northeast",
     "node_public_key": "ecdsa-sha2-nistp384 AAAA...",      (SuperNode authentication)
     "ledger_public_key": "-----BEGIN PUBLIC KEY-----..."}   (Ed25519, verifies its ledger)

The coordinator registers the node key with the SuperLink (so only this bank's
SuperNode can join as this bank) and pins the ledger key (audits check the bank's
ledger against it). Reading a bundle parses both keys with ``cryptography`` and
refuses anything else: other fields, other key types, private keys.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedrisk.consortium.errors import ConsortiumError
from fedrisk.consortium.layout import check_bank_id

BUNDLE_FORMAT = "fedrisk-bank-bundle/1"


@dataclass(frozen=True)
class PublicBundle:
    """A bank's id and public keys, as it sends them to the coordinator.

    Attributes:
        format: :data:`BUNDLE_FORMAT`.
        bank_id: the bank's id in the consortium.
        node_public_key: the SuperNode's authentication public key, one
            ``ecdsa-sha2-nistp384 AAAA...`` line (what ``flwr supernode register`` takes).
        ledger_public_key: PEM of the Ed25519 key that verifies the bank's ledger.

    """

    format: str
    bank_id: str
    node_public_key: str
    ledger_public_key: str

    def to_json(self) -> str:
        """The bundle file's text."""
        return json.dumps(asdict(self), indent=2) + "\n"


def make_bundle(bank_id: str, node_public_key: bytes, ledger_public_key: bytes) -> PublicBundle:
    """A checked bundle from the bank's public key files' bytes."""
    return check_bundle({"format": BUNDLE_FORMAT, "bank_id": bank_id,
                         "node_public_key": node_public_key.decode("ascii").strip(),
                         "ledger_public_key": ledger_public_key.decode("ascii")}, "bundle")


def read_bundle(path: Path) -> PublicBundle:
    """Read and check a bank's ``public-bundle.json``; a one-line error naming the file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConsortiumError(f"{path}: no such bundle file") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConsortiumError(f"{path}: not a bank bundle (unreadable JSON: {error})") from None
    return check_bundle(document, str(path))


def check_bundle(document: object, origin: str) -> PublicBundle:
    """Check a bundle document: exact fields, a valid bank id, two parseable public keys."""
    expected = {"format", "bank_id", "node_public_key", "ledger_public_key"}
    if not isinstance(document, dict) or set(document) != expected:
        keys = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise ConsortiumError(f"{origin}: a bank bundle has exactly the fields "
                              f"{sorted(expected)}; got {keys}")
    if not all(isinstance(value, str) for value in document.values()):
        raise ConsortiumError(f"{origin}: every bundle field must be a string")
    if document["format"] != BUNDLE_FORMAT:
        raise ConsortiumError(f"{origin}: format '{document['format']}' is not "
                              f"'{BUNDLE_FORMAT}'")
    try:
        check_bank_id(document["bank_id"])
    except ConsortiumError as error:
        raise ConsortiumError(f"{origin}: {error}") from None
    _check_node_key(document["node_public_key"], origin)
    _check_ledger_key(document["ledger_public_key"], origin)
    return PublicBundle(**document)


def _check_node_key(text: str, origin: str) -> None:
    """An OpenSSH ``ecdsa-sha2-nistp384`` public key on one line (what Flower accepts)."""
    if "\n" in text.strip() or not text.startswith("ecdsa-sha2-nistp384 "):
        raise ConsortiumError(f"{origin}: node_public_key must be one "
                              "'ecdsa-sha2-nistp384 AAAA...' line")
    try:
        key = serialization.load_ssh_public_key(text.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ConsortiumError(f"{origin}: node_public_key does not parse as an OpenSSH "
                              "public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ConsortiumError(f"{origin}: node_public_key must be an EC SECP384R1 key")


def _check_ledger_key(text: str, origin: str) -> None:
    """A PEM Ed25519 public key."""
    if "PRIVATE KEY" in text:
        raise ConsortiumError(f"{origin}: ledger_public_key holds a private key; send the "
                              "public key only")
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ConsortiumError(f"{origin}: ledger_public_key does not parse as a PEM public "
                              "key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConsortiumError(f"{origin}: ledger_public_key must be an Ed25519 key")
