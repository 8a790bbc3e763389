"""The consortium's keys and certificates, made with ``cryptography`` only.

- a consortium CA (EC P-384, self-signed) that signs the SuperLink's TLS certificate;
- the SuperLink's TLS key (PKCS8 PEM) and certificate (SANs: the coordinator host,
  ``localhost`` and ``127.0.0.1``);
- per bank, its SuperNode authentication key pair in the format Flower expects
  (EC SECP384R1; private key in OpenSSH format, public key as one
  ``ecdsa-sha2-nistp384 AAAA...`` line) and its Ed25519 ledger-signing key (PEM
  PKCS8, what :func:`fedrisk.privacy.keys.load_or_create_signing_key` reads).

Private keys are written 0600 and never overwritten unless asked to.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrisk.consortium.errors import ConsortiumError
from fedrisk.privacy.keys import (
    ensure_private_dir,
    private_key_pem,
    public_key_pem,
    write_file_with_mode,
)

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-384 (SECP384R1) private key."""
    return ec.generate_private_key(ec.SECP384R1())


def make_ca(common_name: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate valid for ``days`` days."""
    key = new_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     host: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's TLS key and certificate, signed by the CA.

    SANs: ``host`` (as an IP address if it parses as one, else a DNS name),
    ``localhost`` and ``127.0.0.1``.
    """
    key = new_ec_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName(server_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def server_names(host: str) -> list[x509.GeneralName]:
    """The SANs of the SuperLink certificate: ``host``, localhost and 127.0.0.1, deduplicated."""
    names: list[x509.GeneralName] = []
    for value in (host, "localhost", "127.0.0.1"):
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            name = x509.DNSName(value)
        if name not in names:
            names.append(name)
    return names


def node_auth_keys() -> tuple[bytes, bytes]:
    """A SuperNode authentication key pair: (OpenSSH private key, ``ecdsa-sha2-nistp384`` line)."""
    key = new_ec_key()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def ledger_signing_key() -> tuple[bytes, bytes]:
    """A bank's Ed25519 ledger-signing key: (PEM PKCS8 private key, PEM public key).

    The same formats the bank's ledger reads and writes (:mod:`fedrisk.privacy.keys`).
    """
    key = Ed25519PrivateKey.generate()
    return private_key_pem(key), public_key_pem(key).encode("ascii")


def certificate_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_ca(key_path: Path, cert_path: Path) -> tuple[ec.EllipticCurvePrivateKey,
                                                      x509.Certificate]:
    """Load the consortium CA key and certificate written by :func:`make_ca`."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConsortiumError(f"{key_path} is not an EC CA key")
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes())


def make_private_dir(path: Path) -> None:
    """Create ``path`` and missing parents 0700, and set ``path`` itself to 0700."""
    ensure_private_dir(path)
    os.chmod(path, PRIVATE_DIR_MODE)


def write_file(path: Path, data: bytes, mode: int, replace: bool) -> None:
    """Write ``data`` to ``path`` with ``mode`` set at creation (never briefly world-readable).

    An existing file is an error unless ``replace``; a replacement is written to a
    temporary file and renamed over the old one.
    """
    if path.exists() and not replace:
        raise ConsortiumError(f"{path} exists; keys are never overwritten (use --force to "
                              "replace every key of the consortium)")
    tmp = path.with_name(f".{path.name}.tmp")
    write_file_with_mode(tmp, data, mode, exclusive=False)
    os.replace(tmp, path)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=not cert_sign, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )
