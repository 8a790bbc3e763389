"""An outsider against a real consortium on loopback (the session fixture `consortium`:
SuperLink, nginx proxy, three banks), holding only the consortium's CA certificate and the
address the banks dial: every attempt to get past the Fleet API fails, and no bank runs
anything for them. Each attack succeeded against the consortium before the proxy."""

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import tomli_w
from deployment import BANKS

from fedrisk.consortium import Layout, pki
from fedrisk.consortium.commands import flwr_command
from fedrisk.consortium.deploy import registered_nodes, run_flwr_json
from fedrisk.consortium.layout import read_settings
from fedrisk.consortium.processes import read_records

FLWR = str(Path(sys.executable).parent / "flwr")
CLI_TIMEOUT = 90
LOOT_WAIT = 90.0

OUTSIDER_PYPROJECT = {
    "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
    "project": {"name": "outsider", "version": "1.0.0", "dependencies": ["flwr>=1.41"]},
    "tool": {"flwr": {"app": {
        "publisher": "outsider",
        "components": {"serverapp": "outsider_app:server", "clientapp": "outsider_app:client"},
        "config": {"loot-dir": ""},
    }}},
}

OUTSIDER_APP = '''
"""What the issue's attacker ran: read each bank's node config, rows and keys."""
import hashlib, json, os
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.query()
def steal(msg: Message, context: Context) -> Message:
    config = {k: str(v) for k, v in context.node_config.items()}
    loot = {"node_config": config}
    if "data-path" in config:
        lines = Path(config["data-path"]).read_text().splitlines()
        loot["header"], loot["rows"] = lines[0], len(lines) - 1
    if "signing-key" in config:
        loot["signing_key_sha256"] = hashlib.sha256(
            Path(config["signing-key"]).read_bytes()).hexdigest()
    name = config.get("bank-id", "node")
    Path(context.run_config["loot-dir"], f"{name}.json").write_text(json.dumps(loot))
    return Message(RecordDict({"loot": MetricRecord({"rows": loot.get("rows", -1)})}),
                   reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    nodes = list(grid.get_node_ids())
    replies = list(grid.send_and_receive(
        [Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes],
        timeout=120))
    Path(context.run_config["loot-dir"], "server.json").write_text(json.dumps(
        {"nodes": nodes, "replies": len(replies), "cwd": os.getcwd(),
         "tls_key_readable": os.access("server.key", os.R_OK)}))
'''


def bank_facing_address(root: Path) -> str:
    """What the banks dial, and all the outsider knows besides ca.pem."""
    return read_settings(Layout.at(root)).fleet_address


@pytest.fixture(scope="module")
def outsider(consortium, tmp_path_factory):
    """The outsider's own machine: a copy of ca.pem and a flwr connection to the banks' address."""
    home = tmp_path_factory.mktemp("outsider-home")
    ca = home / "ca.pem"
    ca.write_bytes(Layout.at(consortium).ca_cert.read_bytes())
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {
        "default": "target",
        "target": {"address": bank_facing_address(consortium), "root-certificates": str(ca)},
    }}))
    return home


def flwr(home: Path, *args: str) -> dict:
    """Run the outsider's `flwr ARGS --format json`; return its JSON answer."""
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "FLWR_HOME": str(home),
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "HOME": str(home)}
    done = subprocess.run([FLWR, *args, "--format", "json"], env=env, cwd=home,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)
    try:
        return json.loads(done.stdout)
    except ValueError:
        return {"success": False, "error-message": done.stderr or done.stdout,
                "returncode": done.returncode}


def ledger_lines(root: Path) -> dict[str, int]:
    layout = Layout.at(root)
    return {bank: sum(len(p.read_text().splitlines())
                      for p in layout.bank_dir(bank).rglob("*.jsonl")) for bank in BANKS}


def test_an_outsider_cannot_submit_a_run_and_no_bank_runs_their_code(consortium, outsider,
                                                                      tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(tomli_w.dumps(OUTSIDER_PYPROJECT))
    (app / "outsider_app.py").write_text(OUTSIDER_APP)
    loot = tmp_path / "loot"
    loot.mkdir(mode=0o777)
    ledgers = ledger_lines(consortium)
    answer = flwr(outsider, "run", str(app), "target", "--run-config", f"loot-dir='{loot}'")
    deadline = time.monotonic() + (LOOT_WAIT if answer.get("success") else 10)
    while time.monotonic() < deadline and len(list(loot.iterdir())) <= len(BANKS):
        time.sleep(1)
    stolen = {p.name: p.read_text()[:200] for p in loot.iterdir()}
    assert stolen == {}, f"the outsider's app ran: {stolen}"
    assert answer.get("success") is not True, answer
    assert ledger_lines(consortium) == ledgers
    coordinator_runs = _coordinator_runs(consortium)
    assert not any("outsider" in json.dumps(r) for r in coordinator_runs), coordinator_runs


def _coordinator_runs(root: Path) -> list[dict]:
    """The SuperLink's runs, as the coordinator lists them on its own host."""
    layout = Layout.at(root)
    result = run_flwr_json(flwr_command(layout, "ls", "ls", read_settings(layout).connection),
                           "--format", "json")
    assert result.get("success"), result
    return result["runs"]


def test_an_outsider_cannot_register_a_node(consortium, outsider):
    _, public = pki.node_auth_keys()
    key = outsider / "mine.pub"
    key.write_bytes(public)
    before = {str(n["node-id"]) for n in registered_nodes(consortium)}
    answer = flwr(outsider, "supernode", "register", str(key), "target")
    assert answer.get("success") is not True, answer
    assert {str(n["node-id"]) for n in registered_nodes(consortium)} == before


def test_an_outsider_cannot_unregister_a_bank(consortium, outsider):
    nodes = json.loads((Layout.at(consortium).coordinator / "nodes.json").read_text())
    victim = nodes[BANKS[0]]
    answer = flwr(outsider, "supernode", "unregister", str(victim), "target")
    assert answer.get("success") is not True, answer
    status = {str(n["node-id"]): n.get("status") for n in registered_nodes(consortium)}
    assert status.get(str(victim)) == "online", status


@pytest.mark.parametrize("command", [("supernode", "list"), ("ls",)])
def test_an_outsider_cannot_list_nodes_or_runs(outsider, command):
    answer = flwr(outsider, *command, "target")
    assert answer.get("success") is not True, answer


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/health"),
    ("POST", "/v1/control/list-runs"), ("POST", "/v1/control/list-nodes"),
    ("POST", "/v1/control/start-run"), ("POST", "/v1/control/register-node"),
    ("POST", "/v1/runtime/acquire-task"), ("POST", "/v1/runtime/pull-task-input"),
    ("POST", "/v1/fleet/register-node"), ("POST", "/v1/fleet/unregister-node"),
    ("GET", "/v1/fleet/pull-messages"), ("PUT", "/v1/fleet/push-messages"),
    ("POST", "/v1/fleet/../control/list-runs"),
    ("POST", "/v1/fleet/pull-messages/../../control/list-nodes"),
    ("POST", "/v1/fleet/%2e%2e/control/list-runs"),
    ("POST", "//v1/control/list-runs"),
    ("POST", "/v1/fleet/pull-messages/x"),
])
def test_an_outsider_gets_nothing_but_the_fleet_api_over_http(consortium, method, path):
    status, body = raw_request(consortium, method, path)
    assert status == 403, (status, body[:300])  # refused by the proxy, not the SuperLink
    assert b"SuperLink" not in body and b"detail" not in body


def raw_request(root: Path, method: str, path: str) -> tuple[int, bytes]:
    """Send one request with exactly this path over TLS (verified with ca.pem only)."""
    host, port = bank_facing_address(root).rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(Layout.at(root).ca_cert))
    request = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
               "Content-Type: application/protobuf\r\nContent-Length: 0\r\n"
               "Connection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(request)
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    return int(response.split(b" ", 2)[1]), response


def test_the_proxy_forwards_a_fleet_call_to_the_superlink(consortium):
    """The other side of the coin: a Fleet call does pass (and the SuperLink checks its
    signature), so the refusals above are the proxy's doing, not a dead upstream."""
    with httpx.Client(verify=str(Layout.at(consortium).ca_cert), timeout=10) as client:
        response = client.post(f"https://{bank_facing_address(consortium)}/v1/fleet/get-run",
                               headers={"content-type": "application/protobuf"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid SuperNode authentication"}


def test_the_superlink_listens_on_loopback_only_and_the_banks_dial_the_proxy(consortium):
    layout = Layout.at(consortium)
    settings = read_settings(layout)
    records = {r.name: r for r in read_records(layout.pids)}
    assert _listening_sockets(records["superlink"].pid) == [("127.0.0.1", settings.control_port)]
    assert _listening_sockets(records["proxy"].pid) == [(settings.coordinator_host,
                                                        settings.fleet_port)]
    assert settings.control_port != settings.fleet_port


def _listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket of process `pid`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            found.append((_ip(address), int(port, 16)))
    return found


def _ip(hex_address: str) -> str:
    if len(hex_address) == 8:
        return ".".join(str(int(hex_address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return hex_address
