"""``fedrisk consortium bank-init``: a bank prepares to join, on its own host, with its own keys.

The bank makes every private key it needs here, and nobody else ever holds them:

- ``keys/node.key`` (+ ``node.pub``): its SuperNode authentication key pair (EC
  SECP384R1, OpenSSH), which the coordinator registers so that only this bank's
  SuperNode can join as this bank;
- ``keys/signing_key.pem``: the Ed25519 key that signs the bank's ledger;
- ``keys/superexec.secret``: shared by its SuperNode and its ClientApp executor.

Private keys are 0600 in 0700 folders and never overwritten without ``force``; a
signing key that already signs a ledger is kept even then (a new key would orphan
the ledger). The bank's table and contract are referenced where they are: the table
is never copied, and no file of the coordinator's is needed except the consortium's
CA certificate and the fleet address. What leaves the bank is ``public-bundle.json``
(:mod:`fedrisk.consortium.enrollment`). The bank's privacy policy
(``bank-policy.toml``, :class:`~fedrisk.privacy.policy.BankPolicy`) starts as the
deployment default approving this fedrisk app bundle; an existing policy is kept.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509

from fedrisk.consortium import pki
from fedrisk.consortium.bundle import app_bundle_hash
from fedrisk.consortium.commands import (
    LAST_BACKGROUND_PID,
    PORTABLE_ROOT,
    data_check_command,
    executor_command,
    supernode_command,
)
from fedrisk.consortium.enrollment import make_bundle
from fedrisk.consortium.errors import ConsortiumError
from fedrisk.consortium.layout import (
    BankPaths,
    NodeConfig,
    check_bank_id,
    read_bank,
    split_address,
    write_bank,
)
from fedrisk.data import check_table_file
from fedrisk.privacy.keys import load_or_create_signing_key, public_key_pem
from fedrisk.privacy.policy import POLICY_FILENAME, BankPolicy

DEFAULT_RUNTIME_PORT = 9094  # Flower's default for a SuperNode's local Runtime API
PRIVATE_UMASK = 0o077


def bank_init(bank_dir: Path, bank_id: str, data: Path, contract: Path, fleet_address: str,
              ca: Path, runtime_port: int = DEFAULT_RUNTIME_PORT,
              force: bool = False) -> BankPaths:
    """Create a bank's folder, keys, policy and public bundle on the bank's host.

    Args:
        bank_dir: the bank's folder (created 0700); keys go to ``keys/``.
        bank_id: the bank's id in the consortium (lowercase letters, digits, ``-``, ``_``).
        data: the bank's own table (CSV/Parquet), referenced in place, never copied.
        contract: the data contract the consortium agreed on, referenced in place.
        fleet_address: ``host:port`` the coordinator gave the bank (its proxy).
        ca: the consortium's CA certificate the coordinator gave the bank; the bank
            keeps its own copy (``ca.pem``) and trusts only that for the SuperLink.
        runtime_port: the port of the SuperNode's Runtime API on the bank's 127.0.0.1.
        force: replace the node key and SuperExec secret (and the signing key if it
            signs no ledger yet).

    Raises:
        ConsortiumError: a bad id, address or file, a table that fails the contract
            check (the bank refuses to join with it), or keys that exist without ``force``.

    """
    bank_dir = Path(bank_dir).expanduser().resolve()
    check_bank_id(bank_id)
    split_address(fleet_address, "--fleet-address")
    data, contract, ca = (_existing(p, label) for p, label in
                          ((data, "data"), (contract, "contract"), (ca, "CA certificate")))
    ca_pem = _ca_certificate(ca)
    report = check_table_file(data, contract)
    if not report.ok:
        raise ConsortiumError(f"bank '{bank_id}' refuses to join: {report.errors[0]}")
    keys = bank_dir / "keys"
    if not force:
        for name in ("node.key", "signing_key.pem", "superexec.secret"):
            if (keys / name).exists():
                raise ConsortiumError(f"{keys / name} exists; keys are never overwritten "
                                      "(use --force to make new ones)")
    with private_umask():
        for path in (bank_dir, keys, bank_dir / "state"):
            pki.make_private_dir(path)
        node_public = _write_node_keys(keys)
        ledger_public = _write_signing_key(bank_dir)
        pki.write_file(keys / "superexec.secret", secrets.token_bytes(32),
                       pki.PRIVATE_FILE_MODE, True)
        pki.write_file(bank_dir / "ca.pem", ca_pem, pki.PUBLIC_FILE_MODE, True)
        _write_policy(bank_dir / POLICY_FILENAME)
        write_bank(bank_dir, NodeConfig(
            bank_id=bank_id, data_path=_relative_if_inside(data, bank_dir),
            contract_path=_relative_if_inside(contract, bank_dir), state_dir="state",
            signing_key="keys/signing_key.pem", auth_private_key="keys/node.key",
            root_certificates="ca.pem", superlink=fleet_address, runtime_port=runtime_port,
            superexec_secret="keys/superexec.secret", policy_path=POLICY_FILENAME))
        paths = read_bank(bank_dir)
        bundle = make_bundle(bank_id, node_public, ledger_public)
        pki.write_file(paths.public_bundle, bundle.to_json().encode(), pki.PUBLIC_FILE_MODE,
                       True)
    return paths


def join_command(bank: BankPaths) -> str:
    """The bank's shell line to join: check its table, start its SuperNode and its executor.

    Run from inside the bank's folder (paths inside it are spelled ``$PWD/...``). The
    SuperNode runs no app code itself (``--isolation process``); the bank's executor, in
    the foreground, runs only the app bundles the bank's policy approves.
    """
    check = data_check_command(bank, root=PORTABLE_ROOT)
    supernode = supernode_command(bank, root=PORTABLE_ROOT)
    executor = executor_command(bank, supernode_pid=LAST_BACKGROUND_PID, root=PORTABLE_ROOT)
    return f"{check.shell()} && {{ {supernode.shell()} & {executor.shell()}; }}"


@contextmanager
def private_umask() -> Iterator[None]:
    """Create files and folders readable by this user only, while inside the block."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def _existing(path: Path, label: str) -> Path:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConsortiumError(f"{label} file {path}: no such file")
    return path


def _ca_certificate(path: Path) -> bytes:
    """The CA certificate's PEM, checked to be a CA certificate."""
    pem = path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(pem)
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound):
        raise ConsortiumError(f"{path} is not a PEM CA certificate") from None
    if not is_ca:
        raise ConsortiumError(f"{path} is not a CA certificate")
    return pem


def _write_node_keys(keys: Path) -> bytes:
    private, public = pki.node_auth_keys()
    pki.write_file(keys / "node.key", private, pki.PRIVATE_FILE_MODE, True)
    pki.write_file(keys / "node.pub", public, pki.PUBLIC_FILE_MODE, True)
    return public


def _write_signing_key(bank_dir: Path) -> bytes:
    """Make the ledger-signing key (one that signs a ledger is kept); return its public PEM."""
    path = bank_dir / "keys" / "signing_key.pem"
    if not (path.exists() and any((bank_dir / "state" / "ledgers").glob("*.jsonl"))):
        private, _ = pki.ledger_signing_key()
        pki.write_file(path, private, pki.PRIVATE_FILE_MODE, True)
    return public_key_pem(load_or_create_signing_key(path)).encode("ascii")


def _write_policy(path: Path) -> None:
    """The deployment default policy approving this fedrisk app bundle, unless one exists."""
    if not path.exists():
        BankPolicy.deployment_default(approved_apps=(app_bundle_hash(),)).save(path)


def _relative_if_inside(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)

