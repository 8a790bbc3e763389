"""``fedrisk consortium init``: keys, certificates and one folder per party.

Default data: with no ``data`` given, each bank gets a partition of the embedded
dataset (``lending_club``: five US census-region banks). A bank named after a
region (``northeast``, ``midwest``, ``south_atlantic``, ``south_central``,
``west``) gets that region; every other bank gets the next unused region in that
order. More banks than regions is an error.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedrisk.consortium import pki
from fedrisk.consortium.approve import write_bank_policy
from fedrisk.consortium.bundle import app_bundle_hash
from fedrisk.consortium.commands import (
    LAST_BACKGROUND_PID,
    PORTABLE_ROOT,
    data_check_command,
    executor_command,
    register_command,
    superlink_command,
    supernode_command,
    write_cli_connection,
)
from fedrisk.consortium.errors import ConsortiumError
from fedrisk.consortium.layout import (
    BankPaths,
    Layout,
    NodeConfig,
    Settings,
    check_bank_id,
    read_bank,
    read_settings,
    write_bank,
    write_settings,
)
from fedrisk.data import Contract, check_table_file, embedded_banks, load_embedded
from fedrisk.privacy.keys import private_key_pem

DEFAULT_BASE_PORT = 9300
DEFAULT_CERT_DAYS = 365
DEFAULT_DATASET = "lending_club"
DEFAULT_CONNECTION = "fedrisk"


@dataclass
class Provisioned:
    """What ``init`` made: the layout, and per party the shell lines it runs.

    Attributes:
        layout: paths of the consortium directory.
        commands: party (``coordinator`` or a bank id) -> shell lines, in order.
        warnings: one line each (e.g. a bank's data fails the contract check).

    """

    layout: Layout
    commands: dict[str, list[str]]
    warnings: list[str] = field(default_factory=list)


def init_consortium(directory: Path, banks: list[str], coordinator_host: str = "127.0.0.1",
                    data: Mapping[str, Path] | None = None, contract: Path | None = None,
                    force: bool = False, base_port: int = DEFAULT_BASE_PORT,
                    dataset: str = DEFAULT_DATASET, cert_days: int = DEFAULT_CERT_DAYS,
                    connection: str = DEFAULT_CONNECTION) -> Provisioned:
    """Provision a consortium: CA, SuperLink TLS, per-bank keys and folders.

    Args:
        directory: the consortium directory (created 0700).
        banks: bank ids (lowercase letters, digits, ``-``, ``_``).
        coordinator_host: name or IP the banks dial; in the server certificate's SANs
            with ``localhost`` and ``127.0.0.1``; the SuperLink binds to it.
        data: bank -> its table (CSV/Parquet), copied into the bank's folder; with
            ``None`` each bank gets its partition of the embedded ``dataset``.
        contract: the data contract (required with ``data``).
        force: replace existing keys (a ledger-signing key whose ledger exists is kept).
        base_port: the SuperLink's port; bank ``i`` (from 0) gets ``base_port + 1 + i``
            for its SuperNode's local Runtime API.
        dataset: the embedded dataset used when ``data`` is ``None``.
        cert_days: validity of the CA and server certificates.
        connection: name of the flwr CLI connection to the SuperLink.

    Raises:
        ConsortiumError: bad bank ids, data/contract mismatch, or a key that
            already exists without ``force`` (one line naming the file).

    """
    layout = Layout.at(directory)
    bank_ids = _check_banks(banks)
    tables = _bank_sources(bank_ids, data, contract, dataset)
    contract_source = contract if data else _embedded_contract(dataset)
    settings = Settings(coordinator_host, base_port, connection, bank_ids)
    _refuse_existing_keys(layout, bank_ids, force)
    with _private_umask():
        _make_dirs(layout)
        _make_tls(layout, coordinator_host, cert_days, force)
        write_settings(layout, settings)
        write_cli_connection(layout, settings)
        warnings = [w for i, bank in enumerate(bank_ids)
                    for w in _provision_bank(layout, settings, bank, i, tables[bank],
                                             contract_source, force)]
    return Provisioned(layout, party_commands(layout), warnings)


def add_bank(directory: Path, bank: str, data: Path | None = None,
             contract: Path | None = None, dataset: str = DEFAULT_DATASET,
             force: bool = False) -> BankPaths:
    """Provision one more bank in an existing consortium (it still has to be registered).

    With ``data`` (and ``contract``, default: the consortium's contract as held by
    its first bank) the bank gets that table; otherwise the next unused partition
    of the embedded dataset.
    """
    layout = Layout.at(directory)
    settings = read_settings(layout)
    check_bank_id(bank)
    banks = settings.banks if bank in settings.banks else (*settings.banks, bank)
    if data is None:
        table: pd.DataFrame | Path = _embedded_tables(list(banks), dataset)[bank]
    else:
        table = Path(data)
    contract_source = contract or _consortium_contract(layout, settings, dataset)
    if not force:
        _refuse_existing_bank_keys(layout, bank)
    updated = Settings(settings.coordinator_host, settings.superlink_port,
                       settings.connection, tuple(banks))
    with _private_umask():
        _provision_bank(layout, updated, bank, banks.index(bank), table, contract_source,
                        force)
        write_settings(layout, updated)
    return read_bank(layout.bank_dir(bank))


def party_commands(layout: Layout) -> dict[str, list[str]]:
    """Per party, the shell lines it runs in a multi-host deployment.

    The coordinator's lines use the absolute paths of its folder (it stays where
    ``init`` ran); each bank's lines start with ``cd`` into its folder and use
    ``$PWD``, so they work wherever the folder is copied on the bank's host. A bank
    starts its SuperNode only if its table passes the contract check (it refuses
    to join otherwise, before connecting), in the background, and its executor (which
    runs only approved app bundles) in the foreground.
    """
    settings = read_settings(layout)
    private = "umask 077  # the database, logs and ledgers: readable by this user only"
    coordinator = [private, superlink_command(layout, settings).shell()]
    coordinator += [register_command(layout, settings, bank).shell() for bank in settings.banks]
    commands = {"coordinator": coordinator}
    for bank in settings.banks:
        paths = read_bank(layout.bank_dir(bank))
        check = data_check_command(paths, root=PORTABLE_ROOT)
        supernode = supernode_command(paths, root=PORTABLE_ROOT)
        executor = executor_command(paths, supernode_pid=LAST_BACKGROUND_PID,
                                    root=PORTABLE_ROOT)
        commands[bank] = [f"cd {paths.root}  # on the bank's host: its copy of this folder",
                          private,
                          f"{check.shell()} && {supernode.shell()} & {executor.shell()}"]
    return commands


def _check_banks(banks: list[str]) -> tuple[str, ...]:
    if not banks:
        raise ConsortiumError("give at least one bank, e.g. --banks bank-a,bank-b,bank-c")
    duplicates = sorted({b for b in banks if banks.count(b) > 1})
    if duplicates:
        raise ConsortiumError(f"bank ids must be unique; repeated: {', '.join(duplicates)}")
    return tuple(check_bank_id(b) for b in banks)


def _bank_sources(banks: tuple[str, ...], data: Mapping[str, Path] | None,
                  contract: Path | None, dataset: str) -> dict[str, pd.DataFrame | Path]:
    if not data:
        if contract is not None:
            raise ConsortiumError("--contract goes with --data BANK=PATH for every bank")
        return dict(_embedded_tables(list(banks), dataset))
    if contract is None:
        raise ConsortiumError("--data needs --contract FILE (the contract all banks agreed on)")
    unknown = sorted(set(data) - set(banks))
    missing = [b for b in banks if b not in data]
    if unknown or missing:
        raise ConsortiumError(f"--data must name exactly the banks; missing: {missing}, "
                              f"unknown: {unknown}")
    for path in [*data.values(), contract]:
        if not Path(path).is_file():
            raise ConsortiumError(f"{path}: no such file")
    return {bank: Path(data[bank]) for bank in banks}


def _embedded_tables(banks: list[str], dataset: str) -> dict[str, pd.DataFrame]:
    """Map banks onto the embedded dataset's partitions (see the module docstring)."""
    partitions = embedded_banks(dataset)
    if len(banks) > len(partitions):
        raise ConsortiumError(f"the embedded dataset '{dataset}' has {len(partitions)} "
                              f"partitions ({', '.join(partitions)}); give --data for "
                              f"{len(banks)} banks")
    free = [name for name in partitions if name not in banks]
    assignment = {bank: bank if bank in partitions else free.pop(0) for bank in banks}
    return {bank: partitions[part] for bank, part in assignment.items()}


def _embedded_contract(dataset: str) -> Contract:
    """The embedded dataset's shipped, reviewed contract."""
    return load_embedded(dataset)[1]


def _consortium_contract(layout: Layout, settings: Settings, dataset: str) -> Path | Contract:
    for bank in settings.banks:
        path = layout.bank_dir(bank) / "contract.toml"
        if path.is_file():
            return path
    return _embedded_contract(dataset)


def _refuse_existing_keys(layout: Layout, banks: tuple[str, ...], force: bool) -> None:
    if force:
        return
    for path in (layout.ca_key, layout.server_key):
        if path.exists():
            raise ConsortiumError(f"{path} exists; keys are never overwritten (use --force to "
                                  "replace every key of the consortium)")
    for bank in banks:
        _refuse_existing_bank_keys(layout, bank)


def _refuse_existing_bank_keys(layout: Layout, bank: str) -> None:
    keys = layout.bank_dir(bank) / "keys"
    for name in ("node.key", "signing_key.pem"):
        if (keys / name).exists():
            raise ConsortiumError(f"{keys / name} exists; keys are never overwritten (use "
                                  "--force to replace every key of the consortium)")


def _make_dirs(layout: Layout) -> None:
    for path in (layout.root, layout.ca_dir, layout.coordinator, layout.node_keys,
                 layout.ledger_keys, layout.flwr_home, layout.runs, layout.banks_dir,
                 layout.logs):
        pki.make_private_dir(path)


def _make_tls(layout: Layout, host: str, days: int, replace: bool) -> None:
    ca_key, ca_cert = pki.make_ca("fedrisk consortium CA", days)
    server_key, server_cert = pki.make_server_cert(ca_key, ca_cert, host, days)
    pki.write_file(layout.ca_key, private_key_pem(ca_key), pki.PRIVATE_FILE_MODE, replace)
    pki.write_file(layout.ca_cert, pki.certificate_pem(ca_cert), pki.PUBLIC_FILE_MODE, True)
    pki.write_file(layout.server_key, private_key_pem(server_key), pki.PRIVATE_FILE_MODE,
                   replace)
    pki.write_file(layout.server_cert, pki.certificate_pem(server_cert), pki.PUBLIC_FILE_MODE,
                   True)


def _provision_bank(layout: Layout, settings: Settings, bank: str, index: int,
                    table: pd.DataFrame | Path, contract: Path | Contract,
                    force: bool) -> list[str]:
    """Write one bank's folder; return warnings (e.g. its data fails the contract)."""
    root = layout.bank_dir(bank)
    for path in (root, root / "keys", root / "state"):
        pki.make_private_dir(path)
    _write_node_keys(layout, root, bank, force)
    _write_signing_key(layout, root, bank, force)
    pki.write_file(root / "keys" / "superexec.secret", secrets.token_bytes(32),
                   pki.PRIVATE_FILE_MODE, True)
    shutil.copyfile(layout.ca_cert, root / "ca.pem")
    if isinstance(contract, Contract):
        contract.save(root / "contract.toml")
    else:
        shutil.copyfile(contract, root / "contract.toml")
    data_name = _write_data(root, table)
    write_bank_policy(root, app_bundle_hash())
    write_bank(root, NodeConfig(
        bank_id=bank, data_path=data_name, contract_path="contract.toml", state_dir="state",
        signing_key="keys/signing_key.pem", auth_private_key="keys/node.key",
        root_certificates="ca.pem", superlink=settings.superlink_address,
        runtime_port=settings.superlink_port + 1 + index,
        superexec_secret="keys/superexec.secret"))
    report = check_table_file(root / data_name, root / "contract.toml")
    return [] if report.ok else [f"bank '{bank}': its data fails the contract check "
                                 f"({report.errors[0]}); it will refuse to join"]


def _write_node_keys(layout: Layout, root: Path, bank: str, force: bool) -> None:
    private, public = pki.node_auth_keys()
    pki.write_file(root / "keys" / "node.key", private, pki.PRIVATE_FILE_MODE, force)
    pki.write_file(root / "keys" / "node.pub", public, pki.PUBLIC_FILE_MODE, True)
    pki.write_file(layout.node_public_key(bank), public, pki.PUBLIC_FILE_MODE, True)


def _write_signing_key(layout: Layout, root: Path, bank: str, force: bool) -> None:
    """Write the ledger-signing key; an existing key that already signs a ledger is kept."""
    path = root / "keys" / "signing_key.pem"
    if path.exists() and any((root / "state" / "ledgers").glob("*.jsonl")):
        return
    private, public = pki.ledger_signing_key()
    pki.write_file(path, private, pki.PRIVATE_FILE_MODE, force)
    pki.write_file(layout.ledger_keys / f"{bank}.pem", public, pki.PUBLIC_FILE_MODE, True)


def _write_data(root: Path, table: pd.DataFrame | Path) -> str:
    if isinstance(table, pd.DataFrame):
        name = "data.csv"
        table.to_csv(root / name, index=False)
    else:
        name = "data" + (table.suffix.lower() or ".csv")
        shutil.copyfile(table, root / name)
    os.chmod(root / name, pki.PRIVATE_FILE_MODE)
    return name


@contextmanager
def _private_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)
