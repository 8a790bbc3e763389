"""Where every file of a consortium lives, and its two small settings files.

::

    DIR/consortium.toml          public settings: coordinator host, ports, banks
    DIR/ca/ca.key                the CA's private key: only needed to issue certificates
    DIR/coordinator/             everything the coordinator host needs
        ca.pem, server.pem, server.key
        node-keys/<bank>.pub     banks' SuperNode public keys (to register)
        ledger-keys/<bank>.pem   banks' ledger-signing public keys (to pin in audits)
        flwr-home/config.toml    the flwr CLI connection (FLWR_HOME of coordinator processes)
        state.db                 the SuperLink database (run registry, registered nodes)
        runs/<name>/             each run's metrics.json, model, plot, run-config.toml
    DIR/banks/<bank>/            everything bank <bank> needs, and nothing of anyone else
        ca.pem, node.toml, contract.toml, data.<csv|parquet>
        keys/node.key, keys/node.pub, keys/signing_key.pem
        state/                   the bank's ledger (created by the bank)
        flwr-home/               FLWR_HOME of the bank's processes
    DIR/logs/<process>.log, DIR/pids.json   written by ``consortium up`` on one machine

``node.toml`` holds paths relative to the bank's own folder, so the folder can be
copied anywhere on the bank's host.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from fedrisk.consortium.errors import ConsortiumError

SETTINGS_FILE = "consortium.toml"
NODE_FILE = "node.toml"
BANK_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class Settings:
    """The consortium's public settings (``DIR/consortium.toml``).

    Attributes:
        coordinator_host: host name or IP address the banks use to reach the SuperLink.
        superlink_port: the SuperLink's single port (Fleet, Control and Runtime APIs).
        connection: name of the SuperLink connection in the coordinator's flwr config.
        banks: provisioned banks, in order.

    """

    coordinator_host: str
    superlink_port: int
    connection: str
    banks: tuple[str, ...]

    @property
    def superlink_address(self) -> str:
        """``host:port`` of the SuperLink, as banks and the flwr CLI dial it."""
        return f"{self.coordinator_host}:{self.superlink_port}"


@dataclass(frozen=True)
class NodeConfig:
    """A bank's ``node.toml``; paths are relative to the bank's folder."""

    bank_id: str
    data_path: str
    contract_path: str
    state_dir: str
    signing_key: str
    auth_private_key: str
    root_certificates: str
    superlink: str
    runtime_port: int
    superexec_secret: str


@dataclass(frozen=True)
class BankPaths:
    """Absolute paths of one bank's files, resolved from its folder and ``node.toml``."""

    root: Path
    node: NodeConfig

    def path(self, relative: str) -> Path:
        """Resolve a ``node.toml`` path against the bank's folder."""
        return (self.root / relative).resolve()

    @property
    def data(self) -> Path:
        """The bank's own table."""
        return self.path(self.node.data_path)

    @property
    def contract(self) -> Path:
        """The agreed data contract."""
        return self.path(self.node.contract_path)

    @property
    def state_dir(self) -> Path:
        """The bank's state directory (ledgers)."""
        return self.path(self.node.state_dir)

    @property
    def signing_key(self) -> Path:
        """The bank's Ed25519 ledger-signing key."""
        return self.path(self.node.signing_key)

    @property
    def auth_key(self) -> Path:
        """The bank's SuperNode authentication private key (OpenSSH)."""
        return self.path(self.node.auth_private_key)

    @property
    def ca_cert(self) -> Path:
        """The CA certificate the bank trusts for the SuperLink."""
        return self.path(self.node.root_certificates)

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME of the bank's SuperNode and ClientApp processes."""
        return self.root / "flwr-home"


def _under(*parts: str) -> property:
    """A read-only path property ``root / parts``."""

    def get(self: Layout) -> Path:
        return self.root.joinpath(*parts)

    return property(get)


@dataclass(frozen=True)
class Layout:
    """Paths of a consortium directory (see the module docstring)."""

    root: Path

    @classmethod
    def at(cls, root: Path | str) -> Layout:
        """The layout of the consortium at ``root`` (made absolute)."""
        return cls(Path(root).expanduser().resolve())

    settings_file = _under(SETTINGS_FILE)
    ca_dir = _under("ca")
    ca_key = _under("ca", "ca.key")
    coordinator = _under("coordinator")
    ca_cert = _under("coordinator", "ca.pem")
    server_cert = _under("coordinator", "server.pem")
    server_key = _under("coordinator", "server.key")
    node_keys = _under("coordinator", "node-keys")
    ledger_keys = _under("coordinator", "ledger-keys")
    flwr_home = _under("coordinator", "flwr-home")
    database = _under("coordinator", "state.db")
    runs = _under("coordinator", "runs")
    banks_dir = _under("banks")
    logs = _under("logs")
    pids = _under("pids.json")

    def bank_dir(self, bank: str) -> Path:
        """The folder of ``bank`` (everything that bank needs)."""
        return self.banks_dir / bank

    def node_public_key(self, bank: str) -> Path:
        """The coordinator's copy of a bank's SuperNode public key."""
        return self.node_keys / f"{bank}.pub"

    def log(self, name: str) -> Path:
        """The log file of one process started by ``consortium up``."""
        return self.logs / f"{name}.log"


def check_bank_id(bank: str) -> str:
    """Return ``bank`` if it is a valid bank id (lowercase letters, digits, ``-``, ``_``)."""
    if not BANK_ID_PATTERN.fullmatch(bank):
        raise ConsortiumError(f"bank id '{bank}' must be lowercase letters, digits, '-' or '_' "
                              "(at most 63 characters, starting with a letter or digit)")
    return bank


def read_settings(layout: Layout) -> Settings:
    """Read ``DIR/consortium.toml``."""
    data = _read_toml(layout.settings_file, "run `fedrisk consortium init` first")
    try:
        return Settings(str(data["coordinator-host"]), int(data["superlink-port"]),
                        str(data["connection"]), tuple(str(b) for b in data["banks"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ConsortiumError(f"{layout.settings_file}: missing or bad key {error}") from None


def write_settings(layout: Layout, settings: Settings) -> None:
    """Write ``DIR/consortium.toml``."""
    document = {"coordinator-host": settings.coordinator_host,
                "superlink-port": settings.superlink_port,
                "connection": settings.connection, "banks": list(settings.banks)}
    layout.settings_file.write_text("# fedrisk consortium settings (public)\n"
                                    + tomli_w.dumps(document))


def read_bank(bank_dir: Path) -> BankPaths:
    """Read a bank folder's ``node.toml``."""
    path = bank_dir / NODE_FILE
    data = _read_toml(path, "provision the bank with `fedrisk consortium init`")
    try:
        node = NodeConfig(**{key.replace("-", "_"): data[key] for key in _NODE_KEYS})
    except KeyError as error:
        raise ConsortiumError(f"{path}: missing key {error}") from None
    return BankPaths(bank_dir.resolve(), node)


def write_bank(bank_dir: Path, node: NodeConfig) -> None:
    """Write a bank folder's ``node.toml``."""
    document = {key: getattr(node, key.replace("-", "_")) for key in _NODE_KEYS}
    header = (f"# SuperNode configuration of bank '{node.bank_id}'.\n"
              "# Paths are relative to this folder; keep the folder on the bank's host only.\n")
    (bank_dir / NODE_FILE).write_text(header + tomli_w.dumps(document))


_NODE_KEYS = ("bank-id", "data-path", "contract-path", "state-dir", "signing-key",
              "auth-private-key", "root-certificates", "superlink", "runtime-port",
              "superexec-secret")


def _read_toml(path: Path, hint: str) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConsortiumError(f"{path} not found; {hint}") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConsortiumError(f"{path}: cannot read: {error}") from None
