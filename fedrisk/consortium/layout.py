"""Where every file of a consortium lives, and its two small settings files.

The coordinator's directory (``DIR``, made by ``consortium init``)::

    DIR/consortium.toml          public settings: fleet address, control address, banks
    DIR/ca/ca.key                the CA's private key: only needed to issue certificates
    DIR/coordinator/             everything the coordinator host needs
        ca.pem, server.pem, server.key
        proxy/nginx.conf         the bank-facing proxy (Fleet API only); pid and temp files
        node-keys/<bank>.pub     banks' SuperNode public keys (registered bundles)
        ledger-keys/<bank>.pem   banks' ledger-signing public keys (to pin in audits)
        flwr-home/config.toml    the flwr CLI connection to the control address
        state.db                 the SuperLink database (run registry, registered nodes)
        runs/<name>/             each run's metrics.json, model, plot, run-config.toml
        ledger-heads.json        each bank's last reported ledger head (rollback detection)
    DIR/logs/<process>.log, DIR/logs/proxy-access.log, DIR/pids.json   written by ``up``

A bank's folder (made on the bank's host by ``consortium bank-init``; the one-machine
demo keeps them in ``DIR/banks/<bank>/``)::

    node.toml, bank-policy.toml, ca.pem, public-bundle.json
    keys/node.key, keys/node.pub, keys/signing_key.pem, keys/superexec.secret
    state/                       the bank's ledger (created by the bank)
    flwr-home/                   FLWR_HOME of the bank's processes

``node.toml`` holds paths relative to the bank's own folder (so the folder can be
moved) and absolute paths for the bank's table and contract when they live elsewhere.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from fedrisk.consortium.errors import ConsortiumError

SETTINGS_FILE = "consortium.toml"
NODE_FILE = "node.toml"
PUBLIC_BUNDLE_FILE = "public-bundle.json"
BANK_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class Settings:
    """The consortium's public settings (``DIR/consortium.toml``).

    Attributes:
        fleet_address: ``host:port`` the banks dial: the proxy, which forwards only the
            Fleet API calls of authenticated SuperNodes.
        control_address: ``host:port`` of the SuperLink itself (Control, Fleet and
            Runtime APIs), on a loopback address: reachable from the coordinator's
            host only. The coordinator's own ``flwr`` uses it.
        connection: name of the SuperLink connection in the coordinator's flwr config.
        banks: registered banks, in order.

    """

    fleet_address: str
    control_address: str
    connection: str
    banks: tuple[str, ...]

    def __post_init__(self) -> None:
        split_address(self.fleet_address, "fleet-address")
        host, _ = split_address(self.control_address, "control-address")
        if not _is_loopback(host):
            raise ConsortiumError(f"control-address '{self.control_address}' must be a "
                                  "loopback address (127.0.0.1): the SuperLink's Control API "
                                  "has no authentication")

    @property
    def coordinator_host(self) -> str:
        """The host name or IP the banks dial (in the server certificate)."""
        return split_address(self.fleet_address)[0]

    @property
    def fleet_port(self) -> int:
        """The proxy's port (what banks dial)."""
        return split_address(self.fleet_address)[1]

    @property
    def control_host(self) -> str:
        """The loopback address the SuperLink binds."""
        return split_address(self.control_address)[0]

    @property
    def control_port(self) -> int:
        """The SuperLink's port on the loopback address."""
        return split_address(self.control_address)[1]


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
    policy_path: str


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
    def policy(self) -> Path:
        """The bank's own privacy policy (``bank-policy.toml``)."""
        return self.path(self.node.policy_path)

    @property
    def superexec_secret(self) -> Path:
        """The secret shared by the bank's SuperNode and its ClientApp executor."""
        return self.path(self.node.superexec_secret)

    @property
    def public_bundle(self) -> Path:
        """What the bank sends the coordinator: its id and public keys."""
        return self.root / PUBLIC_BUNDLE_FILE

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
    proxy_dir = _under("coordinator", "proxy")
    proxy_config = _under("coordinator", "proxy", "nginx.conf")
    node_keys = _under("coordinator", "node-keys")
    ledger_keys = _under("coordinator", "ledger-keys")
    flwr_home = _under("coordinator", "flwr-home")
    database = _under("coordinator", "state.db")
    runs = _under("coordinator", "runs")
    ledger_heads = _under("coordinator", "ledger-heads.json")
    banks_dir = _under("banks")
    logs = _under("logs")
    pids = _under("pids.json")

    def bank_dir(self, bank: str) -> Path:
        """The folder of ``bank`` (everything that bank needs)."""
        return self.banks_dir / bank

    def node_public_key(self, bank: str) -> Path:
        """The coordinator's copy of a bank's SuperNode public key."""
        return self.node_keys / f"{bank}.pub"

    def ledger_public_key(self, bank: str) -> Path:
        """The coordinator's copy of a bank's ledger-signing public key."""
        return self.ledger_keys / f"{bank}.pem"

    def log(self, name: str) -> Path:
        """The log file of one process started by ``consortium up``."""
        return self.logs / f"{name}.log"


def check_bank_id(bank: str) -> str:
    """Return ``bank`` if it is a valid bank id (lowercase letters, digits, ``-``, ``_``)."""
    if not BANK_ID_PATTERN.fullmatch(bank):
        raise ConsortiumError(f"bank id '{bank}' must be lowercase letters, digits, '-' or '_' "
                              "(at most 63 characters, starting with a letter or digit)")
    return bank


def split_address(address: str, key: str = "address") -> tuple[str, int]:
    """``(host, port)`` of a ``host:port`` address (``[v6]:port`` for IPv6)."""
    host, sep, port = str(address).rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConsortiumError(f"{key} '{address}' is not HOST:PORT (a port from 1 to 65535)")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def read_settings(layout: Layout) -> Settings:
    """Read ``DIR/consortium.toml``."""
    data = _read_toml(layout.settings_file, "run `fedrisk consortium init` first")
    if "fleet-address" not in data and "superlink-port" in data:
        raise ConsortiumError(f"{layout.settings_file} predates the bank-facing proxy (no "
                              "fleet-address); provision a new directory with "
                              "`fedrisk consortium init`")
    try:
        return Settings(str(data["fleet-address"]), str(data["control-address"]),
                        str(data["connection"]), tuple(str(b) for b in data["banks"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ConsortiumError(f"{layout.settings_file}: missing or bad key {error}") from None


def write_settings(layout: Layout, settings: Settings) -> None:
    """Write ``DIR/consortium.toml``."""
    document = {"fleet-address": settings.fleet_address,
                "control-address": settings.control_address,
                "connection": settings.connection, "banks": list(settings.banks)}
    layout.settings_file.write_text("# fedrisk consortium settings (public)\n"
                                    "# fleet-address: what banks dial (the proxy, Fleet API only)\n"
                                    "# control-address: the SuperLink, on this host only\n"
                                    + tomli_w.dumps(document))


def read_bank(bank_dir: Path) -> BankPaths:
    """Read a bank folder's ``node.toml``."""
    path = bank_dir / NODE_FILE
    data = _read_toml(path, "create the bank's folder with `fedrisk consortium bank-init`")
    try:
        node = NodeConfig(**{key.replace("-", "_"): data[key] for key in _NODE_KEYS})
    except KeyError as error:
        raise ConsortiumError(f"{path}: missing key {error}") from None
    return BankPaths(bank_dir.resolve(), node)


def write_bank(bank_dir: Path, node: NodeConfig) -> None:
    """Write a bank folder's ``node.toml``."""
    document = {key: getattr(node, key.replace("-", "_")) for key in _NODE_KEYS}
    header = (f"# SuperNode configuration of bank '{node.bank_id}'.\n"
              "# Relative paths are relative to this folder; keep it on the bank's host only.\n")
    (bank_dir / NODE_FILE).write_text(header + tomli_w.dumps(document))


_NODE_KEYS = ("bank-id", "data-path", "contract-path", "state-dir", "signing-key",
              "auth-private-key", "root-certificates", "superlink", "runtime-port",
              "superexec-secret", "policy-path")


def _read_toml(path: Path, hint: str) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConsortiumError(f"{path} not found; {hint}") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConsortiumError(f"{path}: cannot read: {error}") from None
