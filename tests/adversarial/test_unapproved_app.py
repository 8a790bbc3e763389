"""An attacker submits their own Flower app from the coordinator's host: no bank runs it.

The issue's attack: `flwr run` of an app whose ClientApp reads the bank's data file named
in its node config and returns the row count, header and rows. A bank executes only app
bundles whose SHA-256 its own policy approves, checked by the bank's executor before
anything from the bundle is installed or imported, in both ClientApp modes (tasks forked
from a warm process, or each in a fresh interpreter). Real processes on loopback: the
session's consortium (fork, the default) and one more in spawn mode (3 banks, TLS, node
authentication, the nginx proxy).
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from deployment import bank_log, free_base_port, processes_left

from fedrisk.consortium import Layout, consortium_down, consortium_up, init_consortium
from fedrisk.consortium.bundle import app_bundle_hash
from fedrisk.consortium.commands import flwr_command
from fedrisk.consortium.layout import read_settings
from fedrisk.privacy.verify import read_ledger

BANKS = ["northeast", "midwest", "south_atlantic"]
MODES = ["fork", "spawn"]
START_TIMEOUT = 150.0
SUBMIT_TIMEOUT = 240.0
REFUSED = "refused: approved-apps"
INSTALLED = "Successfully installed harvest"  # what Flower's install_from_fab prints

ATTACKER_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "harvest"
version = "1.0.0"
dependencies = ["flwr"]

[tool.flwr.app]
publisher = "attacker"

[tool.flwr.app.components]
serverapp = "harvest.server:app"
clientapp = "harvest.client:app"

[tool.flwr.app.config]
out = ""
marker-dir = ""
banks = 3
"""

ATTACKER_CLIENT = '''\
"""Runs at a bank with the bank's node config: reads the bank's rows and sends them."""

import csv
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def harvest(msg: Message, context: Context) -> Message:
    node = context.node_config
    bank = str(node.get("bank-id", "unknown"))
    marker = Path(str(context.run_config["marker-dir"])) / f"{bank}.ran"
    marker.write_text("attacker code ran at this bank")
    with open(str(node["data-path"]), newline="") as table:
        rows = list(csv.reader(table))
    key = Path(str(node.get("signing-key", "")))
    loot = {"bank": bank, "n_rows": len(rows) - 1, "header": ",".join(rows[0]),
            "first_rows": "\\n".join(",".join(row) for row in rows[1:4]),
            "signing_key_readable": key.is_file()}
    return Message(RecordDict({"loot": ConfigRecord(loot)}), reply_to=msg)
'''

ATTACKER_SERVER = '''\
"""Runs on the coordinator's host: asks every bank and writes down whatever comes back."""

import json
import time
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    expected = int(context.run_config["banks"])
    deadline = time.monotonic() + 60
    nodes = list(grid.get_node_ids())
    while len(nodes) < expected and time.monotonic() < deadline:
        time.sleep(1)
        nodes = list(grid.get_node_ids())
    started = time.monotonic()
    messages = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=120))
    seconds = time.monotonic() - started
    record = []
    for reply in replies:
        if reply.has_error():
            record.append({"error": reply.error.reason})
        else:
            record.append({"content": {name: dict(values) for name, values
                                       in reply.content.config_records.items()}})
    Path(str(context.run_config["out"])).write_text(
        json.dumps({"nodes": len(nodes), "seconds": seconds, "replies": record}))
'''

PLANTED_CLIENT = '''\
from pathlib import Path

from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def planted(msg, context):
    Path(str(context.run_config["marker-dir"]), "planted.ran").write_text("planted code ran")
    raise RuntimeError("planted")
'''


def write_attacker_app(folder: Path) -> Path:
    """The attacker's Flower app: a data-harvesting ClientApp and a recording ServerApp."""
    package = folder / "harvest"
    package.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(ATTACKER_PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "client.py").write_text(ATTACKER_CLIENT)
    (package / "server.py").write_text(ATTACKER_SERVER)
    return folder


def submit(root: Path, app: Path, name: str, markers: Path) -> dict:
    """`flwr run APP` from the coordinator's host, with the coordinator's own connection."""
    layout = Layout.at(root)
    settings = read_settings(layout)
    out = markers.parent / f"{name}.json"
    config = f"out='{out}' marker-dir='{markers}' banks={len(BANKS)}"
    command = flwr_command(layout, name, "run", str(app), settings.connection,
                           "--run-config", config, "--stream")
    done = subprocess.run(command.argv, env=command.process_env(), cwd=command.cwd,
                          capture_output=True, text=True, timeout=SUBMIT_TIMEOUT)
    log = done.stdout + done.stderr
    assert out.exists(), log[-3000:]
    result = json.loads(out.read_text())
    result["run_id"] = re.search(r"started run (\d+)", log, re.IGNORECASE).group(1)
    result["text"] = out.read_text()
    return result


def by_bank(result: dict) -> dict[str, dict]:
    """Each bank's reply, keyed by the bank id it names (in its error text or content)."""
    replies = {}
    for reply in result["replies"]:
        if "error" in reply:
            bank = re.match(r"bank (\S+): ", reply["error"]).group(1)
        else:
            bank = reply["content"]["loot"]["bank"]
        replies[bank] = reply
    return replies


def ledger_entries(root: Path, bank: str, run_id: str) -> list:
    """The bank's ledger entries of one run (every ledger file under its state dir)."""
    state = Layout.at(root).bank_dir(bank) / "state"
    return [entry for path in sorted(state.rglob("*.jsonl")) for entry in read_ledger(path)
            if entry.body.get("run_id") == run_id]


def rows_of(root: Path, bank: str) -> list[str]:
    """The header and first rows of a bank's table: none of it may reach the attacker."""
    return (Layout.at(root).bank_dir(bank) / "data.csv").read_text().splitlines()[:4]


@pytest.fixture(scope="module")
def spawn_consortium(tmp_path_factory):
    """A consortium whose banks run every task in a fresh interpreter (`--clientapp spawn`)."""
    root = tmp_path_factory.mktemp("gate-spawn") / "demo"
    init_consortium(root, BANKS, base_port=free_base_port(6))
    try:
        consortium_up(root, clientapp="spawn", timeout=START_TIMEOUT)
        yield root
    finally:
        consortium_down(root)
        assert processes_left(str(root)) == []


@pytest.fixture(scope="module", params=MODES)
def gate_consortium(request):
    """Each ClientApp mode: fork is the session's consortium (the default), spawn its own."""
    name = "consortium" if request.param == "fork" else "spawn_consortium"
    return request.getfixturevalue(name)


@pytest.fixture(scope="module")
def attacker_app(tmp_path_factory) -> Path:
    return write_attacker_app(tmp_path_factory.mktemp("attacker") / "harvest-app")


@pytest.fixture(scope="module")
def markers(gate_consortium, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("markers") / "ran"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def attack(gate_consortium, attacker_app, markers) -> dict:
    """The attacker's run against banks that never approved the attacker's app."""
    return submit(gate_consortium, attacker_app, "harvest", markers)


def test_an_unapproved_app_gets_only_refusals_at_once(gate_consortium, attack):
    assert attack["nodes"] == len(BANKS)
    replies = by_bank(attack)
    assert sorted(replies) == sorted(BANKS)
    for bank, reply in replies.items():
        assert reply == {"error": f"bank {bank}: {REFUSED}"}
    assert attack["seconds"] < 60  # refused at once, not after a timeout


def test_no_row_of_any_bank_reaches_the_attacker(gate_consortium, attack):
    for bank in BANKS:
        for line in rows_of(gate_consortium, bank):
            assert line not in attack["text"]
    assert "n_rows" not in attack["text"] and "signing_key_readable" not in attack["text"]


def test_no_attacker_code_runs_or_is_installed_at_a_bank(gate_consortium, attack, markers):
    assert list(markers.iterdir()) == []
    for bank in BANKS:
        assert INSTALLED not in bank_log(gate_consortium, bank)


def test_each_bank_records_the_refusal_in_its_signed_ledger_and_nothing_left(gate_consortium,
                                                                            attack):
    for bank in BANKS:
        entries = ledger_entries(gate_consortium, bank, attack["run_id"])
        assert [e.kind for e in entries] == ["refusal"]
        assert entries[0].body["policy_key"] == "approved-apps"
        assert "not approved" in entries[0].body["reason"]


def test_approval_passes_the_gate_and_a_missing_or_corrupt_policy_refuses(spawn_consortium,
                                                                       attacker_app,
                                                                       tmp_path):
    """The first bank approves the attacker's app; the second's policy is corrupt, the
    third's is missing. A copy of the app planted in the first bank's Flower home (at the
    path Flower would install the approved bundle) must never be what runs. The policies are
    restored afterwards, so the other tests of this consortium see the banks as provisioned."""
    layout = Layout.at(spawn_consortium)
    first, corrupt, missing = (layout.bank_dir(bank) for bank in BANKS)
    saved = {path: path.read_bytes() for path in (f / "bank-policy.toml"
                                                  for f in (first, corrupt, missing))}
    digest = app_bundle_hash(attacker_app)
    planted = first / "flwr-home" / "apps" / f"attacker.harvest.1.0.0.{digest[:8]}"
    markers = tmp_path / "ran"
    markers.mkdir()
    try:
        approval = run_cli("consortium", "approve", str(first), "--app-dir", str(attacker_app))
        assert approval.returncode == 0, approval.stderr
        assert digest in approval.stdout
        policy = (first / "bank-policy.toml").read_text()
        assert digest in policy and app_bundle_hash() in policy
        corrupt_policy = corrupt / "bank-policy.toml"
        corrupt_policy.write_text(corrupt_policy.read_text() + "\napproved-apps = [\n")
        (missing / "bank-policy.toml").unlink()
        write_attacker_app(planted)
        (planted / "harvest" / "client.py").write_text(PLANTED_CLIENT)
        result = submit(spawn_consortium, attacker_app, "approved", markers)
    finally:
        for path, content in saved.items():
            path.write_bytes(content)
        shutil.rmtree(planted, ignore_errors=True)
    replies = by_bank(result)
    # the approved bank runs the app, from the very bytes it hashed (not the planted copy)
    assert replies[BANKS[0]]["content"]["loot"]["n_rows"] == len(
        (first / "data.csv").read_text().splitlines()) - 1
    assert (markers / f"{BANKS[0]}.ran").exists() and not (markers / "planted.ran").exists()
    assert INSTALLED in bank_log(spawn_consortium, BANKS[0])
    for bank in BANKS[1:]:  # no policy, or a broken one, approves nothing
        assert replies[bank] == {"error": f"bank {bank}: {REFUSED}"}
        assert not (markers / f"{bank}.ran").exists()
        entries = ledger_entries(spawn_consortium, bank, result["run_id"])
        assert [e.kind for e in entries] == ["refusal"]
        assert "policy" in entries[0].body["reason"]
