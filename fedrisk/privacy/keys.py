"""A bank's Ed25519 signing key, stored as unencrypted PEM PKCS8 readable only by its owner.

The key signs the bank's egress ledger. Its public half sits in the ledger's
genesis entry; an auditor who obtained that public key out of band (for
example from consortium provisioning) can pin it when verifying.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from fedrisk.errors import UserError
from fedrisk.files import PRIVATE_FILE_MODE, ensure_private_dir, fsync_dir, write_file_with_mode


class KeyFileError(UserError):
    """A key file is missing, malformed or too permissive; the message is one actionable line."""


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Return the Ed25519 signing key at ``path``, creating it on first use.

    A new key is written as unencrypted PEM PKCS8 with mode 0600 (missing parent
    directories are created 0700). Creation is atomic: the key is written to a
    temporary file and hard-linked into place, so two processes of the same bank
    starting together end up with the same key. An existing key is loaded only
    if no group/other permission bit is set.

    Raises:
        KeyFileError: the existing file is accessible by group/others, is not a
            regular file, is encrypted, or is not an Ed25519 private key.

    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        return _load_private_key(path)
    return _create_private_key(path)


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Return the SubjectPublicKeyInfo PEM of ``key`` (its public half if it is private)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode("ascii")


def load_public_key(path_or_pem: Path | str | bytes) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM text/bytes or from a PEM file path.

    A ``str`` containing ``-----BEGIN`` is treated as PEM text, any other ``str``
    or ``Path`` as a file path. Private keys are refused: auditors should never
    need one.

    Raises:
        KeyFileError: the file is missing or the content is not an Ed25519 public key.

    """
    pem, origin = _pem_bytes(path_or_pem)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{origin} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{origin} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def _pem_bytes(path_or_pem: Path | str | bytes) -> tuple[bytes, str]:
    if isinstance(path_or_pem, bytes):
        return path_or_pem, "public key PEM"
    if isinstance(path_or_pem, str) and "-----BEGIN" in path_or_pem:
        return path_or_pem.encode("ascii", "replace"), "public key PEM"
    path = Path(path_or_pem)
    try:
        return path.read_bytes(), f"public key file {path}"
    except OSError as exc:
        raise KeyFileError(f"cannot read public key file {path}: {exc.strerror}") from None


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    _check_private_file(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TypeError:
        raise KeyFileError(
            f"signing key {path} is password-protected; fedrisk needs an unencrypted PEM PKCS8 key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(
            f"signing key {path} is not a PEM private key; restore the bank's original key file"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"signing key {path} is a {type(key).__name__}, not Ed25519; "
            "restore the bank's original key file"
        )
    return key


def _check_private_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"signing key {path} is not a regular file")
    if mode & 0o077:
        raise KeyFileError(
            f"signing key {path} has mode {stat.S_IMODE(mode):04o} and is accessible "
            f"by group/others; run: chmod 600 {path}"
        )


def _create_private_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = private_key_pem(key)
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    write_file_with_mode(tmp, pem, PRIVATE_FILE_MODE, exclusive=True)
    try:
        os.link(tmp, path)
    except FileExistsError:
        # Another process of the same bank won the race; its key is the key.
        return _load_private_key(path)
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
    return key


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    """Unencrypted PKCS8 PEM of a private key (Ed25519 ledger keys, EC TLS and CA keys)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
