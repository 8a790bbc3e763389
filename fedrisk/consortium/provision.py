"""``fedrisk consortium init`` and ``register``: the coordinator's side of provisioning.

The coordinator makes the consortium CA, the SuperLink's TLS certificate, the proxy's
configuration and ``consortium.toml``; it never makes, receives or holds a bank's
private key or table. A bank joins by running ``fedrisk consortium bank-init`` on its
own host (:mod:`fedrisk.consortium.bank_side`) and sending its public bundle, which
:func:`register_bundle` checks and pins.

:func:`init_consortium` with banks is the one-machine demo, made by the very same
steps: the coordinator's side, then per bank its side in ``DIR/banks/<bank>/`` (the
stand-in for the bank's host) and the registration of its bundle. Default data: each
bank gets a partition of the embedded dataset (``lending_club``: five US census-region
banks) written into its own folder; a bank named after a region (``northeast``,
``midwest``, ``south_atlantic``, ``south_central``, ``west``) gets that region, every
other bank the next unused region in that order. More banks than regions is an error.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedrisk.consortium import pki
from fedrisk.consortium.bank_side import bank_init, join_command, private_umask
from fedrisk.consortium.commands import write_cli_connection
from fedrisk.consortium.deploy import register_bank, unregister_bank
from fedrisk.consortium.enrollment import PublicBundle, read_bundle
from fedrisk.consortium.errors import ConsortiumError
from fedrisk.consortium.layout import (
    BankPaths,
    Layout,
    Settings,
    check_bank_id,
    read_bank,
    read_settings,
    write_settings,
)
from fedrisk.consortium.processes import accepts_connections
from fedrisk.consortium.proxy import write_proxy_config
from fedrisk.data import Contract, embedded_banks, load_embedded
from fedrisk.privacy.keys import private_key_pem

DEFAULT_BASE_PORT = 9300
DEFAULT_CERT_DAYS = 365
DEFAULT_DATASET = "lending_club"
DEFAULT_CONNECTION = "fedrisk"
BANK_KEY_FILES = ("node.key", "signing_key.pem", "superexec.secret")


@dataclass(frozen=True)
class Step:
    """One step of the two-host walkthrough: who runs it and the shell lines."""

    party: str
    lines: tuple[str, ...]


@dataclass
class Provisioned:
    """What ``init`` made: the layout and the two-host walkthrough of this consortium."""

    layout: Layout
    walkthrough: list[Step]


@dataclass(frozen=True)
class Registration:
    """A registered bank: its id, and its node id if the SuperLink was up to register it."""

    bank: str
    node_id: int | None


def init_coordinator(directory: Path, coordinator_host: str = "127.0.0.1",
                     base_port: int = DEFAULT_BASE_PORT, force: bool = False,
                     cert_days: int = DEFAULT_CERT_DAYS,
                     connection: str = DEFAULT_CONNECTION) -> Layout:
    """The coordinator's side: CA, SuperLink TLS, proxy configuration, settings (no banks).

    Args:
        directory: the consortium directory (created 0700).
        coordinator_host: name or IP the banks dial; the proxy listens on it, and it is
            in the server certificate's SANs with ``localhost`` and ``127.0.0.1``.
        base_port: the fleet port (what banks dial); the SuperLink takes
            ``base_port + 1`` on 127.0.0.1 (the control address).
        force: replace the CA and server keys.
        cert_days: validity of the CA and server certificates.
        connection: name of the coordinator's flwr CLI connection.

    """
    layout = Layout.at(directory)
    settings = Settings(f"{_host(coordinator_host)}:{base_port}", f"127.0.0.1:{base_port + 1}",
                        connection, ())
    if not force:
        for path in (layout.ca_key, layout.server_key):
            if path.exists():
                raise ConsortiumError(f"{path} exists; keys are never overwritten (use --force "
                                      "to replace every key of the consortium)")
    with private_umask():
        for path in (layout.root, layout.ca_dir, layout.coordinator, layout.node_keys,
                     layout.ledger_keys, layout.flwr_home, layout.runs, layout.logs):
            pki.make_private_dir(path)
        _make_tls(layout, coordinator_host, cert_days)
        write_settings(layout, settings)
        write_cli_connection(layout, settings)
        write_proxy_config(layout, settings)
    return layout


def register_bundle(directory: Path, bundle_path: Path, replace: bool = False) -> Registration:
    """Register a bank from its public bundle; register its node key with a running SuperLink.

    Writes ``coordinator/node-keys/<bank>.pub`` and ``coordinator/ledger-keys/<bank>.pem``
    and adds the bank to ``consortium.toml``. Registering the same bundle again is a
    no-op. ``replace`` accepts new keys for a registered bank (it re-keyed); its old
    node is unregistered from a running SuperLink.

    Raises:
        ConsortiumError: an invalid bundle, a bank already registered with other keys,
            or keys registered for another bank (one line).

    """
    layout = Layout.at(directory)
    settings = read_settings(layout)
    bundle = read_bundle(bundle_path)
    bank = bundle.bank_id
    rekeyed = _check_keys(layout, settings, bundle, replace)
    with private_umask():
        pki.write_file(layout.node_public_key(bank), bundle.node_public_key.encode() + b"\n",
                       pki.PUBLIC_FILE_MODE, True)
        pki.write_file(layout.ledger_public_key(bank), bundle.ledger_public_key.encode(),
                       pki.PUBLIC_FILE_MODE, True)
        if bank not in settings.banks:
            write_settings(layout, Settings(settings.fleet_address, settings.control_address,
                                            settings.connection, (*settings.banks, bank)))
    if not accepts_connections(settings.control_host, settings.control_port):
        return Registration(bank, None)
    if rekeyed:
        unregister_bank(layout.root, bank)
    return Registration(bank, register_bank(layout.root, bank))


def init_consortium(directory: Path, banks: list[str] | tuple[str, ...] = (),
                    coordinator_host: str = "127.0.0.1",
                    data: Mapping[str, Path] | None = None, contract: Path | None = None,
                    force: bool = False, base_port: int = DEFAULT_BASE_PORT,
                    dataset: str = DEFAULT_DATASET, cert_days: int = DEFAULT_CERT_DAYS,
                    connection: str = DEFAULT_CONNECTION) -> Provisioned:
    """The coordinator's side, then (the one-machine demo) each bank's side and registration.

    Args:
        directory: the consortium directory (created 0700).
        banks: bank ids; none provisions the coordinator only (banks then join with
            ``bank-init`` on their hosts and ``register``).
        coordinator_host: see :func:`init_coordinator`.
        data: bank -> its table (CSV/Parquet), read in place; with ``None`` each bank
            gets its partition of the embedded ``dataset`` in ``DIR/banks/<bank>/``.
        contract: the data contract (required with ``data``).
        force: replace existing keys (a ledger-signing key whose ledger exists is kept).
        base_port: the fleet port; the SuperLink takes ``base_port + 1`` on 127.0.0.1
            and bank ``i`` (from 0) ``base_port + 2 + i`` for its local Runtime API.
        dataset: the embedded dataset used when ``data`` is ``None``.
        cert_days: validity of the CA and server certificates.
        connection: name of the coordinator's flwr CLI connection.

    Raises:
        ConsortiumError: bad bank ids, data/contract mismatch, a bank whose table fails
            the contract, or a key that already exists without ``force`` (one line).

    """
    layout = Layout.at(directory)
    bank_ids = _check_banks(list(banks))
    tables = _bank_sources(bank_ids, data, contract, dataset)
    if not force:
        for bank in bank_ids:
            _refuse_existing_bank_keys(layout.bank_dir(bank))
    init_coordinator(layout.root, coordinator_host, base_port, force, cert_days, connection)
    contract_source = contract if data else _embedded_contract(dataset)
    for index, bank in enumerate(bank_ids):
        _demo_bank(layout, bank, index, tables[bank], contract_source, force)
    return Provisioned(layout, walkthrough(layout))


def add_bank(directory: Path, bank: str, data: Path | None = None,
             contract: Path | None = None, dataset: str = DEFAULT_DATASET,
             force: bool = False) -> BankPaths:
    """One more bank in the one-machine demo: its side in ``DIR/banks/<bank>/``, then ``register``.

    With ``data`` (and ``contract``, default: the contract of the consortium's first
    bank) the bank uses that table in place; otherwise the next unused partition of
    the embedded dataset. A running SuperLink registers its node key at once.
    """
    layout = Layout.at(directory)
    settings = read_settings(layout)
    check_bank_id(bank)
    banks = settings.banks if bank in settings.banks else (*settings.banks, bank)
    table = _embedded_tables(list(banks), dataset)[bank] if data is None else Path(data)
    contract_source = contract or _consortium_contract(layout, settings, dataset)
    return _demo_bank(layout, bank, banks.index(bank), table, contract_source, force)


def demo_bank_side(layout: Layout, bank: str, index: int, table: pd.DataFrame | Path,
                   contract: Path | Contract, force: bool = False) -> BankPaths:
    """The bank's side of the demo, in ``DIR/banks/<bank>/``, without registering it.

    An embedded table is written there (0600) as the bank's own table; a given table
    is used in place.
    """
    folder = layout.bank_dir(bank)
    with private_umask():
        pki.make_private_dir(folder)
        if isinstance(table, pd.DataFrame):
            data = folder / "data.csv"
            pki.write_file(data, table.to_csv(index=False).encode(), pki.PRIVATE_FILE_MODE,
                           True)
        else:
            data = table
        if isinstance(contract, Contract):
            contract.save(folder / "contract.toml")
            contract = folder / "contract.toml"
    settings = read_settings(layout)
    return bank_init(folder, bank, data, contract, settings.fleet_address, layout.ca_cert,
                     runtime_port=settings.fleet_port + 2 + index, force=force)


def walkthrough(layout: Layout) -> list[Step]:
    """What each party runs on its own host, for this consortium's banks and files.

    The coordinator's lines use its directory's absolute paths; each bank's lines use
    the bank's own folder, table and contract, and the CA certificate and fleet
    address the coordinator gave it. The bank's last line starts its SuperNode from
    inside its folder, after checking its table against the contract.
    """
    settings = read_settings(layout)
    root = shlex.quote(str(layout.root))
    steps = [Step("coordinator", (
        f"fedrisk consortium init {root} --coordinator-host {settings.coordinator_host} "
        f"--base-port {settings.fleet_port}",
        f"fedrisk consortium up {root} --coordinator-only",
        f"# give each bank {layout.ca_cert} and the fleet address {settings.fleet_address}"))]
    for bank in settings.banks:
        folder = layout.bank_dir(bank)
        if not (folder / "node.toml").is_file():
            continue  # the bank's folder is on its own host
        paths = read_bank(folder)
        steps.append(Step(bank, (
            f"fedrisk consortium bank-init {shlex.quote(str(folder))} --bank-id {bank} "
            f"--data {shlex.quote(str(paths.data))} "
            f"--contract {shlex.quote(str(paths.contract))} "
            f"--fleet-address {paths.node.superlink} --ca {shlex.quote(str(layout.ca_cert))} "
            f"--runtime-port {paths.node.runtime_port}",
            f"# send {paths.public_bundle} to the coordinator")))
        steps.append(Step("coordinator", (
            f"fedrisk consortium register {root} {shlex.quote(str(paths.public_bundle))}",)))
        steps.append(Step(bank, (
            f"cd {shlex.quote(str(folder))} && umask 077", join_command(paths))))
    steps.append(Step("coordinator", (f"fedrisk consortium run {root} --rounds 2",
                                      f"fedrisk consortium down {root}")))
    return steps


def _demo_bank(layout: Layout, bank: str, index: int, table: pd.DataFrame | Path,
               contract: Path | Contract, force: bool) -> BankPaths:
    paths = demo_bank_side(layout, bank, index, table, contract, force)
    register_bundle(layout.root, paths.public_bundle, replace=force)
    return paths


def _check_keys(layout: Layout, settings: Settings, bundle: PublicBundle,
                replace: bool) -> bool:
    """Refuse keys registered for another bank, or other keys for this one (unless ``replace``).

    Returns whether the bank was registered with another node key (it re-keyed).
    """
    bank = bundle.bank_id
    for other in settings.banks:
        if other == bank:
            continue
        if _read(layout.node_public_key(other)).strip() == bundle.node_public_key.strip():
            raise ConsortiumError(f"bank '{bank}': its node key is already registered for "
                                  f"bank '{other}'")
        if _read(layout.ledger_public_key(other)).strip() == bundle.ledger_public_key.strip():
            raise ConsortiumError(f"bank '{bank}': its ledger key is already registered for "
                                  f"bank '{other}'")
    node_key = _read(layout.node_public_key(bank)).strip()
    ledger_key = _read(layout.ledger_public_key(bank)).strip()
    changed = [name for name, old, new in (
        ("node", node_key, bundle.node_public_key.strip()),
        ("ledger", ledger_key, bundle.ledger_public_key.strip())) if old and old != new]
    if changed and not replace:
        raise ConsortiumError(f"bank '{bank}' is already registered with a different "
                              f"{' and '.join(changed)} key; if the bank made new keys, "
                              "register its bundle with --replace")
    return "node" in changed


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_banks(banks: list[str]) -> tuple[str, ...]:
    duplicates = sorted({b for b in banks if banks.count(b) > 1})
    if duplicates:
        raise ConsortiumError(f"bank ids must be unique; repeated: {', '.join(duplicates)}")
    return tuple(check_bank_id(b) for b in banks)


def _bank_sources(banks: tuple[str, ...], data: Mapping[str, Path] | None,
                  contract: Path | None, dataset: str) -> dict[str, pd.DataFrame | Path]:
    if not data:
        if contract is not None:
            raise ConsortiumError("--contract goes with --data BANK=PATH for every bank")
        return dict(_embedded_tables(list(banks), dataset)) if banks else {}
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
    return {bank: Path(data[bank]).resolve() for bank in banks}


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
        if (layout.bank_dir(bank) / "node.toml").is_file():
            return read_bank(layout.bank_dir(bank)).contract
    return _embedded_contract(dataset)


def _refuse_existing_bank_keys(folder: Path) -> None:
    for name in BANK_KEY_FILES:
        if (folder / "keys" / name).exists():
            raise ConsortiumError(f"{folder / 'keys' / name} exists; keys are never overwritten "
                                  "(use --force to replace every key of the consortium)")


def _make_tls(layout: Layout, host: str, days: int) -> None:
    ca_key, ca_cert = pki.make_ca("fedrisk consortium CA", days)
    server_key, server_cert = pki.make_server_cert(ca_key, ca_cert, host, days)
    pki.write_file(layout.ca_key, private_key_pem(ca_key), pki.PRIVATE_FILE_MODE, True)
    pki.write_file(layout.ca_cert, pki.certificate_pem(ca_cert), pki.PUBLIC_FILE_MODE, True)
    pki.write_file(layout.server_key, private_key_pem(server_key), pki.PRIVATE_FILE_MODE, True)
    pki.write_file(layout.server_cert, pki.certificate_pem(server_cert), pki.PUBLIC_FILE_MODE,
                   True)

