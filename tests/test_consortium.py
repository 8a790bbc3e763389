"""Consortium deployment with real processes on loopback: TLS, the bank-facing nginx proxy,
node authentication, one bank per SuperNode. One consortium (3 banks, the session fixture
`consortium` in conftest.py, shared with tests/adversarial) is started once and stopped by pid."""

import re
import socket
import stat
import time
from pathlib import Path

import pytest
from deployment import (
    BANKS,
    RUN_TIMEOUT,
    START_TIMEOUT,
    bank_log,
    free_base_port,
    processes_left,
    unregistered_bank,
)

from fedrisk.consortium import (
    ConsortiumError,
    Layout,
    RunFailedError,
    consortium_down,
    consortium_run,
    consortium_up,
    init_consortium,
    pki,
    proxy,
    start_bank,
)
from fedrisk.consortium.bundle import app_bundle_hash
from fedrisk.consortium.layout import read_bank, read_settings
from fedrisk.consortium.processes import read_records
from fedrisk.data import check_table_file, read_table
from fedrisk.privacy.chain import TrustedKeys
from fedrisk.privacy.keys import load_or_create_signing_key, load_public_key
from fedrisk.privacy.verify import verify_ledger, verify_path
from fedrisk.server.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def rogue(consortium):
    """A SuperNode whose key was never registered tries to join; returns the error and time."""
    unregistered_bank(consortium, "rogue")
    started = time.monotonic()
    with pytest.raises(ConsortiumError) as refused:
        start_bank(consortium, "rogue", timeout=60)
    return refused.value, time.monotonic() - started


@pytest.fixture(scope="module")
def trained(consortium, rogue):
    """A full DP run (3 banks, 2 rounds, SecAgg+, fine-tuning) after the rogue node was
    refused."""
    metrics = consortium_run(consortium, {"num-server-rounds": 2, "personalization": "finetune"},
                             name="dp", timeout=RUN_TIMEOUT)
    return metrics


def private_secrets(bank_dir: Path) -> dict[str, bytes]:
    """Every private secret a bank made, as file bytes, base64 body lines and raw key bytes."""
    from cryptography.hazmat.primitives import serialization

    keys = bank_dir / "keys"
    found = {}
    for name in ("node.key", "signing_key.pem", "superexec.secret"):
        data = (keys / name).read_bytes()
        found[name] = data
        for i, line in enumerate(data.splitlines()):
            if len(line) >= 40 and not line.startswith(b"-----"):
                found[f"{name}:line{i}"] = line
    node = serialization.load_ssh_private_key(found["node.key"], password=None)
    found["node.key:raw"] = node.private_numbers().private_value.to_bytes(48, "big")
    signing = serialization.load_pem_private_key(found["signing_key.pem"], password=None)
    found["signing_key.pem:raw"] = signing.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption())
    found["superexec.secret:hex"] = found["superexec.secret"].hex().encode()
    return found


def test_the_coordinator_holds_no_bank_private_key_and_banks_made_their_own(consortium):
    layout = Layout.at(consortium)
    coordinator_files = [p for folder in (layout.coordinator, layout.ca_dir)
                         for p in folder.rglob("*") if p.is_file()]
    assert coordinator_files
    contents = {p: p.read_bytes() for p in coordinator_files}
    for bank in BANKS:
        folder = layout.bank_dir(bank)
        for label, secret in private_secrets(folder).items():
            holders = [str(p) for p, data in contents.items() if secret in data]
            assert holders == [], f"{bank} {label} found in {holders}"
        keys = folder / "keys"
        for path in (folder, keys, folder / "state"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700
        for name in ("node.key", "signing_key.pem", "superexec.secret"):
            assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
        assert stat.S_IMODE(read_bank(folder).data.stat().st_mode) == 0o600
        # what the coordinator registered is exactly the public half of the bank's own keys
        assert layout.node_public_key(bank).read_text() == (keys / "node.pub").read_text()
        signing = load_public_key(layout.ledger_public_key(bank))
        own = load_or_create_signing_key(keys / "signing_key.pem").public_key()
        assert signing.public_bytes_raw() == own.public_bytes_raw()
    assert stat.S_IMODE(layout.server_key.stat().st_mode) == 0o600
    with pytest.raises(ConsortiumError, match="exists; keys are never overwritten"):
        init_consortium(consortium, BANKS)


def test_full_dp_training_through_the_proxy_with_node_authentication(consortium, trained):
    metrics = trained
    layout = Layout.at(consortium)
    settings = read_settings(layout)
    assert metrics["privacy"] == "DP-SGD (record-level)"
    assert metrics["config"]["secure_aggregation"] is True
    assert metrics["config"]["min-banks"] == 3
    assert sorted(b["id"] for b in metrics["banks"]) == sorted(BANKS)
    assert len(metrics["rounds"]) == 2
    for round_record in metrics["rounds"]:
        assert round_record["banks_trained"] == 3
    for bank in metrics["banks"]:
        assert 0 < bank["epsilon"] <= 3.0 and bank["rounds_joined"] == 2
    output = layout.runs / "dp"
    assert (output / "metrics.json").exists() and (output / "model.safetensors").exists()
    superlink_log = layout.log("superlink").read_text()
    assert f"Uvicorn running on https://{settings.control_address}" in superlink_log
    # every SuperNode dials the proxy's fleet address, not the SuperLink
    records = {r.name: r for r in read_records(layout.pids)}
    for bank in BANKS:
        argv = Path(f"/proc/{records[bank].pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--superlink") + 1].decode() == settings.fleet_address
    assert settings.fleet_address != settings.control_address
    access = (layout.logs / proxy.ACCESS_LOG).read_text()
    for call in ("activate-node", "pull-messages", "push-messages", "pull-object",
                 "push-object", "get-fab"):
        assert re.search(rf'"POST /v1/fleet/{call} HTTP/1.1" 200 \d+ upstream=200', access), call
    for bank in BANKS:  # the bundle `flwr run` sent is the one `init` approved, by hash
        assert f"runs approved app bundle {app_bundle_hash()}" in bank_log(consortium, bank)
    for bank in BANKS:  # each bank's ledger: on its own disk, signed by its registered key
        results = verify_path(layout.bank_dir(bank) / "state")
        assert len(results) == 1 and results[0].ok
        pinned = verify_ledger(results[0].path, TrustedKeys(
            every_bank=load_public_key(layout.ledger_public_key(bank))))
        assert pinned.ok
        reported = next(b for b in metrics["banks"] if b["id"] == bank)
        assert results[0].last_epsilon == reported["epsilon"]


def test_an_unregistered_supernode_is_refused_and_the_run_completes_without_it(consortium,
                                                                               rogue, trained):
    error, seconds = rogue
    assert "not registered" in str(error) and "\n" not in str(error)
    assert seconds < 60
    assert "Failed to activate SuperNode" in bank_log(consortium, "rogue")
    assert "rogue" not in {b["id"] for b in trained["banks"]}
    assert all(r["banks_trained"] == 3 for r in trained["rounds"])


def test_a_bank_with_the_wrong_ca_fails_with_one_line_not_a_hang(consortium):
    folder = unregistered_bank(consortium, "wrong-ca")
    _, other_ca = pki.make_ca("another CA", 1)
    (folder / "ca.pem").write_bytes(pki.certificate_pem(other_ca))
    started = time.monotonic()
    with pytest.raises(ConsortiumError) as failed:
        start_bank(consortium, "wrong-ca", timeout=60)
    assert time.monotonic() - started < 60
    message = str(failed.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message and "\n" not in message
    assert "CERTIFICATE_VERIFY_FAILED" in bank_log(consortium, "wrong-ca")
    assert processes_left(str(folder)) == []


def bad_table(consortium: Path, folder: Path) -> tuple[Path, Path, str]:
    """A copy of a bank's table without a contract column, its contract and the check's error."""
    layout = Layout.at(consortium)
    table = read_table(layout.bank_dir("northeast") / "data.csv").drop(columns=["funded_amnt"])
    bad = folder / "bad.csv"
    table.to_csv(bad, index=False)
    contract = layout.bank_dir("northeast") / "contract.toml"
    return bad, contract, check_table_file(bad, contract).errors[0].split(": ", 1)[1]


def test_a_bank_whose_data_fails_the_contract_refuses_to_join_and_sends_nothing(
        consortium, tmp_path):
    """The table went bad after bank-init (which refuses a bad table outright)."""
    data = tmp_path / "table.csv"
    data.write_bytes((Layout.at(consortium).bank_dir("northeast") / "data.csv").read_bytes())
    folder = unregistered_bank(consortium, "bad-data", data=data)
    bad, _, expected = bad_table(consortium, tmp_path)
    bad.replace(data)
    with pytest.raises(ConsortiumError) as refused:
        start_bank(consortium, "bad-data", timeout=START_TIMEOUT)
    message = str(refused.value)
    assert message.startswith("bank 'bad-data' refuses to join: ") and expected in message
    assert "\n" not in message
    assert expected in bank_log(consortium, "bad-data")
    assert processes_left(str(folder)) == []
    assert list((folder / "state").rglob("*.jsonl")) == []  # no ledger, so no egress entry


def test_a_failed_run_raises_with_its_reason(consortium, trained):
    with pytest.raises(RunFailedError) as failed:
        consortium_run(consortium, {"num-server-rounds": 1, "secagg-num-shares": 2},
                       name="fails", timeout=RUN_TIMEOUT)
    message = str(failed.value)
    assert "finished:failed" in message and "num_shares" in message
    assert "\n" not in message


@pytest.fixture
def second(tmp_path):
    """A second, small consortium (never started unless a test does)."""
    root = tmp_path / "second"
    base = free_base_port(4)
    init_consortium(root, ["west"], base_port=base)
    try:
        yield root, base
    finally:
        consortium_down(root)
        assert processes_left(str(root)) == []


def test_up_on_a_port_in_use_fails_and_leaves_nothing_running(second):
    root, base = second
    for port, label in ((base, "proxy, the Fleet API banks dial"), (base + 1, "SuperLink"),
                        (base + 2, "Runtime API of bank 'west'")):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            with pytest.raises(ConsortiumError, match=re.escape(f"port {port} ({label})")):
                consortium_up(root, timeout=START_TIMEOUT)
        assert read_records(Layout.at(root).pids) == []
        assert processes_left(str(root)) == []


def test_up_without_nginx_is_a_one_line_error_naming_the_package(second, monkeypatch, tmp_path):
    root, _ = second
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(proxy, "_SEARCH_PATH", str(tmp_path))
    with pytest.raises(ConsortiumError, match=re.escape("(`apt-get install nginx`)")):
        consortium_up(root, timeout=START_TIMEOUT)
    assert read_records(Layout.at(root).pids) == []


def test_up_with_a_bank_whose_data_fails_refuses_and_starts_nothing(second, tmp_path):
    root, _ = second
    data = Layout.at(root).bank_dir("west") / "data.csv"
    read_table(data).drop(columns=["funded_amnt"]).to_csv(data, index=False)
    with pytest.raises(ConsortiumError, match="bank 'west' refuses to join: .*funded_amnt"):
        consortium_up(root, timeout=START_TIMEOUT)
    assert "funded_amnt" in bank_log(root, "west")
    assert read_records(Layout.at(root).pids) == []
    assert processes_left(str(root)) == []


def test_up_with_a_missing_key_fails_and_leaves_nothing_running(second):
    root, _ = second
    key = Layout.at(root).bank_dir("west") / "keys" / "node.key"
    key.unlink()
    with pytest.raises(ConsortiumError, match=f"missing SuperNode key of bank 'west': {key}"):
        consortium_up(root, timeout=START_TIMEOUT)
    assert read_records(Layout.at(root).pids) == []
    assert processes_left(str(root)) == []


def test_up_stops_what_it_started_when_a_bank_cannot_connect(second):
    root, _ = second
    _, other_ca = pki.make_ca("another CA", 1)
    (Layout.at(root).bank_dir("west") / "ca.pem").write_bytes(pki.certificate_pem(other_ca))
    with pytest.raises(ConsortiumError, match="bank 'west' exited: TLS verification"):
        consortium_up(root, timeout=START_TIMEOUT)
    assert read_records(Layout.at(root).pids) == []
    assert processes_left(str(root)) == []


def test_run_without_a_superlink_is_a_one_line_error(second):
    root, base = second
    with pytest.raises(ConsortiumError, match=f"no SuperLink answers at 127.0.0.1:{base + 1}"):
        consortium_run(root, {"num-server-rounds": 1})


def test_a_resumed_run_is_the_same_run_at_every_bank(consortium, trained):
    """`consortium run --resume NAME`: the coordinator died after the last round's checkpoint,
    before writing its outputs. The resume is a new Flower run that every bank accounts as the
    same run (run-id) with the same config; a changed config or a finished run is refused."""
    (Path(trained["config"]["output-dir"]) / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match="'target-epsilon' is 1.0 here and 3.0"):
        consortium_run(consortium, {"target-epsilon": 1.0}, resume="dp")
    metrics = consortium_run(consortium, {}, resume="dp", timeout=RUN_TIMEOUT)
    assert metrics["run_id"] == trained["run_id"] and metrics["resumed_from_round"] == 2
    assert metrics["resumes"][0]["flower_run_id"] != trained["run_id"]
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for bank in BANKS:  # admitted again under the run's id, nothing charged twice
        (ledger,) = (consortium / "banks" / bank / "state").rglob("*.jsonl")
        assert verify_ledger(ledger).ok
        spends = [line for line in ledger.read_text().splitlines()
                  if '"privacy_spend"' in line and f'"{trained["run_id"]}"' in line]
        assert len(spends) == 3  # rounds 1, 2 and personalization: the resume trained nothing
    with pytest.raises(ConsortiumError, match="finished all 2 rounds"):
        consortium_run(consortium, {}, resume="dp")
