"""The command each party of a consortium runs, as argv lists and as shell lines.

One builder per command, parameterized by the party's folder: ``consortium up``
passes absolute paths and runs the argv directly; the commands printed for a
multi-host deployment are the same argv rendered for a shell. A bank's command
is rendered with ``$PWD`` so that it works from inside the bank's folder wherever
that folder is copied on the bank's host.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fedrisk.client.executor import EXECUTOR_MODULE
from fedrisk.consortium.errors import ConsortiumError
from fedrisk.consortium.layout import BankPaths, Layout, NodeConfig, Settings

PORTABLE_ROOT = "$PWD"
LAST_BACKGROUND_PID = "$!"  # the shell's pid of the command just started with `&`
QUIET_FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


@dataclass(frozen=True)
class Command:
    """A process to start: argv, extra environment and working directory."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def shell(self) -> str:
        """The command as one shell line (``$PWD`` left for the shell to expand)."""
        assignments = [f"{key}={_quote(value)}" for key, value in self.env.items()]
        return " ".join([*assignments, *(_quote(arg) for arg in self.argv)])

    def process_env(self) -> dict[str, str]:
        """The full environment: this one's, Flower's quiet settings, this venv on PATH."""
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {**os.environ, **QUIET_FLOWER_ENV, "PATH": path, **self.env}


def superlink_command(layout: Layout, settings: Settings) -> Command:
    """``flower-superlink`` with TLS, SuperNode authentication and a database file.

    It binds the loopback control address only: banks reach it through the proxy
    (:mod:`fedrisk.consortium.proxy`), which forwards the Fleet API and nothing else.
    """
    coordinator = str(layout.coordinator)
    argv = ["flower-superlink",
            "--ssl-ca-certfile", f"{coordinator}/ca.pem",
            "--ssl-certfile", f"{coordinator}/server.pem",
            "--ssl-keyfile", f"{coordinator}/server.key",
            "--enable-supernode-auth",
            "--database", f"{coordinator}/state.db",
            "--disable-runtime-dependency-installation",
            "--host", settings.control_host, "--port", str(settings.control_port)]
    return Command("superlink", argv, {"FLWR_HOME": f"{coordinator}/flwr-home"},
                   layout.coordinator)


def flwr_command(layout: Layout, name: str, *args: str) -> Command:
    """A ``flwr`` CLI command against the consortium's SuperLink connection."""
    return Command(name, ["flwr", *args], {"FLWR_HOME": str(layout.flwr_home)},
                   layout.coordinator)


def register_command(layout: Layout, settings: Settings, bank: str) -> Command:
    """``flwr supernode register`` of a bank's public key, named after the bank."""
    return flwr_command(layout, f"register-{bank}", "supernode", "register",
                        str(layout.node_public_key(bank)), settings.connection, "--name", bank)


def supernode_command(bank: BankPaths, root: str | None = None) -> Command:
    """``flower-supernode`` of one bank: the CA, its own key and its own data.

    It runs ``--isolation process``: it executes no app code itself; the bank's own
    executor (:func:`executor_command`) runs each task behind the bank's app gate.
    ``root`` is how the bank's folder is spelled: its absolute path (default) or
    ``$PWD`` for a command run from inside the folder.
    """
    root = root or str(bank.root)
    node = bank.node
    argv = ["flower-supernode",
            "--superlink", node.superlink,
            "--root-certificates", f"{root}/{node.root_certificates}",
            "--auth-supernode-private-key", f"{root}/{node.auth_private_key}",
            "--port", str(node.runtime_port),
            "--isolation", "process",
            "--superexec-auth-secret-file", f"{root}/{node.superexec_secret}",
            "--node-config", node_config_text(node, root)]
    return Command(node.bank_id, argv, {"FLWR_HOME": f"{root}/flwr-home"},
                   None if root == PORTABLE_ROOT else bank.root)


def data_check_command(bank: BankPaths, root: str | None = None) -> Command:
    """``fedrisk data check`` of the bank's table against the contract (exit 2 on errors)."""
    root = root or str(bank.root)
    node = bank.node
    argv = ["fedrisk", "data", "check", in_folder(root, node.data_path),
            "--contract", in_folder(root, node.contract_path)]
    return Command(f"{node.bank_id}-check", argv)


def executor_command(bank: BankPaths, mode: str = "fork",
                     supernode_pid: int | str | None = None, root: str | None = None) -> Command:
    """The bank's executor (:mod:`fedrisk.client.executor`): it runs the SuperNode's tasks.

    ``mode``: ``fork`` (each task forked from a process with torch loaded) or ``spawn``
    (each task in a fresh interpreter). ``supernode_pid`` (or ``$!`` in a shell line):
    the executor exits when that process does.
    """
    root = root or str(bank.root)
    node = bank.node
    argv = [sys.executable if root != PORTABLE_ROOT else "python", "-m", EXECUTOR_MODULE,
            "serve", "--mode", mode,
            "--runtime-api-address", f"127.0.0.1:{node.runtime_port}",
            "--superexec-auth-secret-file", f"{root}/{node.superexec_secret}"]
    if supernode_pid is not None:
        argv += ["--parent-pid", str(supernode_pid)]
    return Command(f"{node.bank_id}-clientapps", argv, {"FLWR_HOME": f"{root}/flwr-home"},
                   None if root == PORTABLE_ROOT else bank.root)


def node_config_text(node: NodeConfig, root: str) -> str:
    """The ``--node-config`` value: the keys :mod:`fedrisk.client.bank` reads.

    Values are TOML literal strings (single quotes), so the text also works inside
    a double-quoted shell word where ``$PWD`` expands.
    """
    pairs = {"bank-id": node.bank_id, "data-path": in_folder(root, node.data_path),
             "contract-path": in_folder(root, node.contract_path),
             "state-dir": in_folder(root, node.state_dir),
             "signing-key": in_folder(root, node.signing_key),
             "policy-path": in_folder(root, node.policy_path)}
    for key, value in pairs.items():
        if any(c in value for c in "'\"\n"):
            raise ConsortiumError(f"{key} {value!r} contains a quote; move the bank folder "
                                  "to a path without quotes")
    return " ".join(f"{key}='{value}'" for key, value in pairs.items())


def in_folder(root: str, path: str) -> str:
    """A ``node.toml`` path as the bank's command spells it: absolute paths stay as they are."""
    return path if Path(path).is_absolute() else f"{root}/{path}"


def write_cli_connection(layout: Layout, settings: Settings) -> Path:
    """Write ``coordinator/flwr-home/config.toml``: the coordinator's ``flwr`` connection.

    It points at the control address (loopback), the only place the Control API is served.
    """
    layout.flwr_home.mkdir(parents=True, exist_ok=True, mode=0o700)
    document = {"superlink": {
        "default": settings.connection,
        settings.connection: {"address": settings.control_address,
                              "root-certificates": str(layout.ca_cert)},
    }}
    path = layout.flwr_home / "config.toml"
    path.write_text(tomli_w.dumps(document))
    return path


def _quote(arg: str) -> str:
    if arg == LAST_BACKGROUND_PID:
        return arg
    if PORTABLE_ROOT in arg:
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'
    return shlex.quote(arg)
