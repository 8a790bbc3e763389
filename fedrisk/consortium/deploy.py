"""``fedrisk consortium up`` / ``down``: every party as a real process on this machine.

``up`` starts the SuperLink on the loopback control address (TLS, SuperNode
authentication, a database file, runtime dependency installation off), registers
each bank's public key, starts the bank-facing proxy (nginx, :mod:`.proxy`) on the
fleet address and checks it from the banks' side (a Fleet call reaches the
SuperLink, ``/docs`` is refused), then starts one SuperNode per bank on its own
Runtime API port, each dialing the fleet address and reading only its own folder
(``coordinator_only`` stops before the banks: on separate hosts each bank starts its
own). Before anything starts, each bank checks its table against the contract and
refuses to join if it fails (as ``fedrisk data check`` does in a bank's multi-host
command). It returns once every party is ready, or stops everything it started and
raises :class:`ConsortiumError` with one line saying why (nginx missing, a port in
use, a missing key, a bank refused, ...).

Every SuperNode runs ``--isolation process`` beside the bank's own executor
(:mod:`fedrisk.client.executor`), which runs each message only if the bank's policy
approves the run's app bundle. ClientApp execution (``clientapp``):

- ``"fork"`` (default): each message is forked from a process that has already
  imported torch and fedrisk;
- ``"spawn"``: each message runs in a fresh interpreter (Flower's default isolation).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedrisk.client.executor import MODES as CLIENTAPP_MODES
from fedrisk.client.executor import READY_LINE
from fedrisk.consortium.commands import (
    Command,
    executor_command,
    register_command,
    superlink_command,
    supernode_command,
    write_cli_connection,
)
from fedrisk.consortium.errors import ConsortiumError
from fedrisk.consortium.layout import BankPaths, Layout, Settings, read_bank, read_settings
from fedrisk.consortium.processes import (
    ProcessRecord,
    accepts_connections,
    log_text,
    port_in_use,
    read_records,
    start,
    stop,
    write_records,
)
from fedrisk.consortium.proxy import (
    check_proxy,
    find_nginx,
    proxy_command,
    validate_proxy_config,
    write_proxy_config,
)
from fedrisk.data import check_table_file

DEFAULT_START_TIMEOUT = 120.0
DEFAULT_STOP_TIMEOUT = 15.0
DEFAULT_TASK_POLL_INTERVAL = 0.2
CLI_TIMEOUT = 60.0
CONNECTED_LINE = "SuperNode ID:"
NODES_FILE = "nodes.json"
_LOG_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED", "TLS verification of the SuperLink failed "
     "(CERTIFICATE_VERIFY_FAILED): its ca.pem is not the CA that signed the SuperLink's "
     "certificate"),
    ("Failed to activate SuperNode", "the SuperLink refused its key (Failed to activate "
     "SuperNode): its public key is not registered"),
    ("Errno 98", "its port is already in use (Errno 98)"),
    ("address already in use", "its port is already in use"),
)


def consortium_up(directory: Path, clientapp: str = "fork",
                  timeout: float = DEFAULT_START_TIMEOUT, niceness: int = 0,
                  task_poll_interval: float = DEFAULT_TASK_POLL_INTERVAL,
                  coordinator_only: bool = False) -> list[ProcessRecord]:
    """Start the SuperLink, the proxy and one SuperNode per bank here; return their records.

    Args:
        directory: a consortium made by :func:`~fedrisk.consortium.init_consortium`.
        clientapp: ``"fork"`` or ``"spawn"`` (see the module docstring).
        timeout: seconds to wait for the SuperLink and every bank to be ready.
        niceness: ``nice`` increment of every process (0: none).
        task_poll_interval: seconds between a SuperExec's polls for new tasks
            (Flower's ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``; its default is 1).
        coordinator_only: start the SuperLink and the proxy only (banks on other hosts).

    Raises:
        ConsortiumError: one line (already running, a missing file, a port in use,
            a process that exited or was not ready in time); nothing is left running.

    """
    layout = Layout.at(directory)
    settings = read_settings(layout)
    banks = [] if coordinator_only else [read_bank(layout.bank_dir(b)) for b in settings.banks]
    _check_mode(clientapp)
    nginx = find_nginx()
    _refuse_if_running(layout)
    _check_files(layout, settings, banks)
    _check_ports(settings, banks)
    for bank in banks:
        _preflight(layout, bank)
    write_cli_connection(layout, settings)
    write_proxy_config(layout, settings)
    validate_proxy_config(layout, nginx)
    env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(task_poll_interval)}
    deadline = time.monotonic() + timeout
    records: list[ProcessRecord] = []
    try:
        records.append(_start_superlink(layout, settings, env, niceness, deadline))
        write_records(layout.pids, records)
        register_banks(layout.root, list(settings.banks))
        records.append(_start_proxy(layout, settings, nginx, niceness, deadline))
        write_records(layout.pids, records)
        for bank in banks:
            records += _launch_bank(layout, bank, clientapp, env, niceness)
            write_records(layout.pids, records)
        for bank in banks:
            _wait_bank_ready(layout, bank, records, deadline)
    except BaseException:
        _stop_all(records, DEFAULT_STOP_TIMEOUT)
        write_records(layout.pids, [])
        raise
    return records


def consortium_down(directory: Path, timeout: float = DEFAULT_STOP_TIMEOUT) -> list[str]:
    """Stop every process ``up`` started (banks first): SIGTERM, SIGKILL after ``timeout``.

    Returns the names of the processes that were recorded.
    """
    layout = Layout.at(directory)
    records = read_records(layout.pids)
    _stop_all(records, timeout)
    write_records(layout.pids, [])
    return [record.name for record in records]


def start_bank(directory: Path, bank: str, clientapp: str = "fork",
               timeout: float = DEFAULT_START_TIMEOUT, niceness: int = 0,
               task_poll_interval: float = DEFAULT_TASK_POLL_INTERVAL) -> list[ProcessRecord]:
    """Start one bank's SuperNode against the running SuperLink and wait until it is connected.

    Raises :class:`ConsortiumError` with the reason (e.g. its key is not registered,
    or its CA is not the consortium's) after stopping what it started.
    """
    layout = Layout.at(directory)
    paths = read_bank(layout.bank_dir(bank))
    _check_mode(clientapp)
    _check_bank_files(paths)
    _preflight(layout, paths)
    if port_in_use("127.0.0.1", paths.node.runtime_port):
        raise ConsortiumError(f"port {paths.node.runtime_port} (Runtime API of bank '{bank}') "
                              "on 127.0.0.1 is in use")
    env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(task_poll_interval)}
    records = _launch_bank(layout, paths, clientapp, env, niceness)
    try:
        _wait_bank_ready(layout, paths, records, time.monotonic() + timeout)
    except BaseException:
        _stop_all(records, DEFAULT_STOP_TIMEOUT)
        raise
    write_records(layout.pids, read_records(layout.pids) + records)
    return records


def stop_bank(directory: Path, bank: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> list[str]:
    """Stop one bank's processes recorded in ``pids.json``; return their names."""
    layout = Layout.at(directory)
    records = read_records(layout.pids)
    mine = [r for r in records if r.name in (bank, f"{bank}-clientapps")]
    _stop_all(mine, timeout)
    write_records(layout.pids, [r for r in records if r not in mine])
    return [r.name for r in mine]


def restart_superlink(directory: Path, timeout: float = DEFAULT_START_TIMEOUT,
                      niceness: int = 0,
                      task_poll_interval: float = DEFAULT_TASK_POLL_INTERVAL) -> ProcessRecord:
    """Start the SuperLink again (after a crash) with the same command and database.

    Registered banks and finished runs are kept in its database; the banks' SuperNodes
    and the proxy keep running and reconnect by themselves. A run it was coordinating
    is lost with its ServerApp: continue it with ``consortium run DIR --resume RUN``.
    A SuperLink still running is stopped first.
    """
    layout = Layout.at(directory)
    settings = read_settings(layout)
    records = read_records(layout.pids)
    _stop_all([r for r in records if r.name == "superlink"], DEFAULT_STOP_TIMEOUT)
    others = [r for r in records if r.name != "superlink"]
    write_records(layout.pids, others)
    env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(task_poll_interval)}
    record = _start_superlink(layout, settings, env, niceness, time.monotonic() + timeout)
    write_records(layout.pids, [record, *others])
    return record


def register_bank(directory: Path, bank: str) -> int | None:
    """Register a bank's SuperNode public key with the SuperLink; return its node id.

    A key that is already registered (e.g. after a restart on the same database)
    is fine: the node id recorded then is returned.
    """
    return register_banks(directory, [bank])[bank]


def register_banks(directory: Path, banks: list[str]) -> dict[str, int | None]:
    """Register several banks' public keys concurrently; return bank -> node id."""
    layout = Layout.at(directory)
    settings = read_settings(layout)
    for bank in banks:
        _require_file(f"public key of bank '{bank}'", layout.node_public_key(bank))
    with ThreadPoolExecutor(max_workers=max(1, len(banks))) as pool:
        results = dict(zip(banks, pool.map(
            lambda b: run_flwr_json(register_command(layout, settings, b), "--format", "json"),
            banks), strict=True))
    nodes = _read_nodes(layout)
    for bank, result in results.items():
        if result.get("success"):
            nodes[bank] = int(result["node-id"])
        elif "already in use" not in str(result.get("error-message", "")):
            raise ConsortiumError(f"registering bank '{bank}' failed: "
                                  f"{_one_line(result.get('error-message', result))}")
    (layout.coordinator / NODES_FILE).write_text(json.dumps(nodes, indent=2))
    return {bank: nodes.get(bank) for bank in banks}


def unregister_bank(directory: Path, bank: str) -> None:
    """Remove a bank's SuperNode from the federation (by the node id recorded at registration)."""
    layout = Layout.at(directory)
    settings = read_settings(layout)
    node_id = _read_nodes(layout).get(bank)
    if node_id is None:
        raise ConsortiumError(f"no node id recorded for bank '{bank}' in "
                              f"{layout.coordinator / NODES_FILE}")
    command = Command(f"unregister-{bank}", ["flwr", "supernode", "unregister", str(node_id),
                                             settings.connection],
                      {"FLWR_HOME": str(layout.flwr_home)}, layout.coordinator)
    result = run_flwr_json(command, "--format", "json")
    if not result.get("success"):
        raise ConsortiumError(f"unregistering bank '{bank}' failed: "
                              f"{_one_line(result.get('error-message', result))}")


def registered_nodes(directory: Path) -> list[dict]:
    """The SuperLink's SuperNodes (``flwr supernode list``), without unregistered ones."""
    layout = Layout.at(directory)
    settings = read_settings(layout)
    command = Command("list-nodes", ["flwr", "supernode", "list", settings.connection],
                      {"FLWR_HOME": str(layout.flwr_home)}, layout.coordinator)
    result = run_flwr_json(command, "--format", "json")
    if not result.get("success"):
        raise ConsortiumError(f"cannot list SuperNodes at {settings.control_address}: "
                              f"{_one_line(result.get('error-message', result))}")
    return [n for n in result["nodes"] if n.get("status") != "unregistered"]


def run_flwr_json(command: Command, *extra: str) -> dict:
    """Run a ``flwr`` CLI command with JSON output; return the parsed document."""
    try:
        done = subprocess.run([*command.argv, *extra], env=command.process_env(),
                              cwd=command.cwd, capture_output=True, text=True,
                              timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ConsortiumError(f"`{' '.join(command.argv[:3])}` did not answer within "
                              f"{CLI_TIMEOUT:.0f} s") from None
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise ConsortiumError(f"`{' '.join(command.argv[:3])}` failed: "
                              f"{_one_line(done.stderr or done.stdout)}") from None


def _check_mode(clientapp: str) -> None:
    if clientapp not in CLIENTAPP_MODES:
        raise ConsortiumError(f"clientapp must be one of {', '.join(CLIENTAPP_MODES)}")


def _refuse_if_running(layout: Layout) -> None:
    running = [r for r in read_records(layout.pids) if r.alive()]
    if running:
        raise ConsortiumError(f"the consortium in {layout.root} is already up (pids "
                              f"{', '.join(str(r.pid) for r in running)}); run "
                              "`fedrisk consortium down` first")
    write_records(layout.pids, [])


def _check_files(layout: Layout, settings: Settings, banks: list[BankPaths]) -> None:
    required = {"CA certificate": layout.ca_cert, "SuperLink TLS certificate":
                layout.server_cert, "SuperLink TLS key": layout.server_key}
    for label, path in required.items():
        _require_file(label, path)
    for bank in settings.banks:
        _require_file(f"public key of bank '{bank}'", layout.node_public_key(bank))
    for bank in banks:
        _check_bank_files(bank)


def _check_bank_files(bank: BankPaths) -> None:
    name = bank.node.bank_id
    required = {"CA certificate": bank.ca_cert, "SuperNode key": bank.auth_key,
                "ledger-signing key": bank.signing_key, "data file": bank.data,
                "contract": bank.contract, "privacy policy": bank.policy,
                "SuperExec secret": bank.superexec_secret}
    for label, path in required.items():
        _require_file(f"{label} of bank '{name}'", path)


def _preflight(layout: Layout, bank: BankPaths) -> None:
    """The bank checks its own table against the contract and refuses to join if it fails.

    The check's first error goes to the bank's log; nothing is started, so nothing
    can leave the bank. (The ClientApp checks again when it loads the table.)
    """
    report = check_table_file(bank.data, bank.contract)
    if report.ok:
        return
    message = f"bank '{bank.node.bank_id}' refuses to join: {report.errors[0]}"
    log = layout.log(bank.node.bank_id)
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log, "a", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        out.write(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} ERROR {message}\n")
        out.writelines(f"  {line}\n" for line in report.errors)
    raise ConsortiumError(f"{message} (log: {log})")


def _require_file(label: str, path: Path) -> None:
    if not path.is_file():
        raise ConsortiumError(f"missing {label}: {path}")


def _check_ports(settings: Settings, banks: list[BankPaths]) -> None:
    ports = [("proxy, the Fleet API banks dial", settings.coordinator_host, settings.fleet_port),
             ("SuperLink", settings.control_host, settings.control_port)]
    ports += [(f"Runtime API of bank '{b.node.bank_id}'", "127.0.0.1", b.node.runtime_port)
              for b in banks]
    seen: set[int] = set()
    for label, host, port in ports:
        if port in seen:
            raise ConsortiumError(f"port {port} ({label}) is assigned twice")
        seen.add(port)
        if port_in_use(host, port):
            raise ConsortiumError(f"port {port} ({label}) on {host} is in use; stop what "
                                  "uses it or provision with another --base-port")


def _start_superlink(layout: Layout, settings: Settings, env: dict[str, str], niceness: int,
                     deadline: float) -> ProcessRecord:
    command = superlink_command(layout, settings)
    command = dataclasses.replace(command, env={**command.env, **env})
    record = start(command, layout.log("superlink"), niceness)
    while not accepts_connections(settings.control_host, settings.control_port):
        _fail_if_exited(record, "the SuperLink")
        if time.monotonic() > deadline:
            raise ConsortiumError(f"the SuperLink did not accept connections on "
                                  f"{settings.control_address} in time (log: {record.log})")
        time.sleep(0.2)
    return record


def _start_proxy(layout: Layout, settings: Settings, nginx: str, niceness: int,
                 deadline: float) -> ProcessRecord:
    """Start nginx on the fleet address and check it from the banks' side."""
    record = start(proxy_command(layout, nginx), layout.log("proxy"), niceness)
    while not accepts_connections(settings.coordinator_host, settings.fleet_port):
        _fail_if_exited(record, "the proxy")
        if time.monotonic() > deadline:
            raise ConsortiumError(f"the proxy did not accept connections on "
                                  f"{settings.fleet_address} in time (log: {record.log})")
        time.sleep(0.1)
    check_proxy(layout, settings, deadline)
    return record


def _launch_bank(layout: Layout, bank: BankPaths, clientapp: str, env: dict[str, str],
                 niceness: int) -> list[ProcessRecord]:
    command = supernode_command(bank)
    command = dataclasses.replace(command, env={**command.env, **env})
    records = [start(command, layout.log(bank.node.bank_id), niceness)]
    executor = executor_command(bank, clientapp, records[0].pid)
    executor = dataclasses.replace(executor, env={**executor.env, **env})
    records.append(start(executor, layout.log(executor.name), niceness))
    return records


def _wait_bank_ready(layout: Layout, bank: BankPaths, records: list[ProcessRecord],
                     deadline: float) -> None:
    name = bank.node.bank_id
    mine = [r for r in records if r.name in (name, f"{name}-clientapps")]
    waiting = {r.name: (CONNECTED_LINE if r.name == name else READY_LINE) for r in mine}
    while waiting:
        for record in mine:
            if record.name in waiting and waiting[record.name] in log_text(record):
                del waiting[record.name]
            elif record.name in waiting:
                _fail_if_exited(record, f"bank '{name}'")
        if waiting and time.monotonic() > deadline:
            raise ConsortiumError(f"bank '{name}' did not connect to the SuperLink in time "
                                  f"(log: {layout.log(name)})")
        time.sleep(0.2)


def _fail_if_exited(record: ProcessRecord, who: str) -> None:
    if not record.alive():
        raise ConsortiumError(f"{who} exited: {explain_log(log_text(record))} "
                              f"(log: {record.log})")


def explain_log(text: str) -> str:
    """One line saying why a Flower process stopped, from its log."""
    for needle, reason in _LOG_REASONS:
        if needle in text:
            return reason
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return _one_line((errors or lines or ["no output"])[-1])


def _stop_all(records: list[ProcessRecord], timeout: float) -> None:
    for record in reversed(records):
        stop(record, timeout)


def _read_nodes(layout: Layout) -> dict[str, int]:
    path = layout.coordinator / NODES_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]
