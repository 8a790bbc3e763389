"""Consortium deployment with real processes on loopback: TLS, node authentication, one bank
per SuperNode. One consortium (3 banks) is started once for the module and stopped by pid."""

import os
import random
import socket
import stat
import time
from pathlib import Path

import pytest

from fedrisk.consortium import (
    ConsortiumError,
    Layout,
    RunFailedError,
    add_bank,
    consortium_down,
    consortium_run,
    consortium_up,
    init_consortium,
    pki,
    start_bank,
)
from fedrisk.consortium.bundle import app_bundle_hash
from fedrisk.consortium.processes import read_records
from fedrisk.data import check_table_file, read_table
from fedrisk.privacy.ledger import verify_path

BANKS = ["northeast", "midwest", "south_atlantic"]
START_TIMEOUT = 150.0
RUN_TIMEOUT = 600.0


def free_base_port(count: int) -> int:
    """A base port with `count` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def processes_mentioning(text: str) -> list[str]:
    """Live processes (pid and command) whose command line mentions `text` (a consortium dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes()
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in command and state != "Z" and int(cmdline.parent.name) != os.getpid():
            shown = command.replace(bytes(1), b" ").decode(errors="replace")[:200]
            found.append(f"{cmdline.parent.name}: {shown}")
    return found


def bank_log(root: Path, bank: str) -> str:
    return "".join(p.read_text(errors="replace") for p in (root / "logs").glob(f"{bank}*.log"))


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("consortium") / "demo"
    init_consortium(root, BANKS, base_port=free_base_port(10))
    try:
        consortium_up(root, timeout=START_TIMEOUT)
        yield root
    finally:
        consortium_down(root)
        time.sleep(0.5)
        assert processes_mentioning(str(root)) == []


@pytest.fixture(scope="module")
def rogue(consortium):
    """A SuperNode whose key was never registered tries to join; returns the error and time."""
    add_bank(consortium, "rogue")
    started = time.monotonic()
    with pytest.raises(ConsortiumError) as refused:
        start_bank(consortium, "rogue", timeout=60)
    return refused.value, time.monotonic() - started


@pytest.fixture(scope="module")
def trained(consortium, rogue):
    """A full DP run (3 banks, 2 rounds, SecAgg+) after the rogue node was refused."""
    metrics = consortium_run(consortium, {"num-server-rounds": 2}, name="dp",
                             timeout=RUN_TIMEOUT)
    return metrics


def test_provisioning_keeps_private_keys_private_and_in_their_owners_folder(consortium):
    layout = Layout.at(consortium)
    for bank in BANKS:
        keys = layout.bank_dir(bank) / "keys"
        for name in ("node.key", "signing_key.pem"):
            assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
        assert stat.S_IMODE(layout.bank_dir(bank).stat().st_mode) == 0o700
        assert (keys / "node.pub").read_text().startswith("ecdsa-sha2-nistp384 AAAA")
        assert (keys / "node.key").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY")
        others = [b for b in BANKS if b != bank]
        own = {p.read_bytes() for p in keys.iterdir()}
        for other in others:
            assert not own & {p.read_bytes() for p in (layout.bank_dir(other) / "keys").iterdir()
                              if p.name != "node.pub"}
    coordinator_files = {p.name for p in layout.coordinator.rglob("*") if p.is_file()}
    assert not coordinator_files & {"node.key", "signing_key.pem", "ca.key"}
    assert stat.S_IMODE(layout.server_key.stat().st_mode) == 0o600
    with pytest.raises(ConsortiumError, match="exists; keys are never overwritten"):
        init_consortium(consortium, BANKS)


def test_full_dp_training_over_tls_with_node_authentication(consortium, trained):
    metrics = trained
    assert metrics["privacy"] == "DP-SGD (record-level)"
    assert metrics["config"]["secure_aggregation"] is True
    assert metrics["config"]["min-banks"] == 3
    assert sorted(b["id"] for b in metrics["banks"]) == sorted(BANKS)
    assert len(metrics["rounds"]) == 2
    for round_record in metrics["rounds"]:
        assert round_record["banks_trained"] == 3
    for bank in metrics["banks"]:
        assert 0 < bank["epsilon"] <= 3.0 and bank["rounds_joined"] == 2
    output = Layout.at(consortium).runs / "dp"
    assert (output / "metrics.json").exists() and (output / "model.safetensors").exists()
    superlink_log = (Layout.at(consortium).log("superlink")).read_text()
    assert "Uvicorn running on https://" in superlink_log  # TLS, not --insecure
    for bank in BANKS:  # the bundle `flwr run` sent is the one `init` approved, by hash
        assert f"runs approved app bundle {app_bundle_hash()}" in bank_log(consortium, bank)
    for bank in BANKS:  # each bank's ledger is on its own disk, signed, with its ε
        results = verify_path(Layout.at(consortium).bank_dir(bank) / "state")
        assert len(results) == 1 and results[0].ok
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
    add_bank(consortium, "wrong-ca")
    _, other_ca = pki.make_ca("another CA", 1)
    ca = Layout.at(consortium).bank_dir("wrong-ca") / "ca.pem"
    ca.write_bytes(pki.certificate_pem(other_ca))
    started = time.monotonic()
    with pytest.raises(ConsortiumError) as failed:
        start_bank(consortium, "wrong-ca", timeout=60)
    assert time.monotonic() - started < 60
    message = str(failed.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message and "\n" not in message
    assert "CERTIFICATE_VERIFY_FAILED" in bank_log(consortium, "wrong-ca")
    assert processes_mentioning(str(Layout.at(consortium).bank_dir("wrong-ca"))) == []


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
    bad, contract, expected = bad_table(consortium, tmp_path)
    add_bank(consortium, "bad-data", data=bad, contract=contract)
    with pytest.raises(ConsortiumError) as refused:
        start_bank(consortium, "bad-data", timeout=START_TIMEOUT)
    message = str(refused.value)
    assert message.startswith("bank 'bad-data' refuses to join: ") and expected in message
    assert "\n" not in message
    assert expected in bank_log(consortium, "bad-data")
    bank_dir = Layout.at(consortium).bank_dir("bad-data")
    assert processes_mentioning(str(bank_dir)) == []
    assert list((bank_dir / "state").rglob("*.jsonl")) == []  # no ledger, so no egress entry


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
        assert processes_mentioning(str(root)) == []


def test_up_on_a_port_in_use_fails_and_leaves_nothing_running(second):
    root, base = second
    for port, label in ((base, "SuperLink"), (base + 1, "Runtime API of bank 'west'")):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            with pytest.raises(ConsortiumError, match=f"port {port} \\({label}\\)"):
                consortium_up(root, timeout=START_TIMEOUT)
        assert read_records(Layout.at(root).pids) == []
        assert processes_mentioning(str(root)) == []


def test_up_with_a_bank_whose_data_fails_refuses_and_starts_nothing(second, tmp_path):
    root, _ = second
    data = Layout.at(root).bank_dir("west") / "data.csv"
    read_table(data).drop(columns=["funded_amnt"]).to_csv(data, index=False)
    with pytest.raises(ConsortiumError, match="bank 'west' refuses to join: .*funded_amnt"):
        consortium_up(root, timeout=START_TIMEOUT)
    assert "funded_amnt" in bank_log(root, "west")
    assert read_records(Layout.at(root).pids) == []
    assert processes_mentioning(str(root)) == []


def test_up_with_a_missing_key_fails_and_leaves_nothing_running(second):
    root, _ = second
    key = Layout.at(root).bank_dir("west") / "keys" / "node.key"
    key.unlink()
    with pytest.raises(ConsortiumError, match=f"missing SuperNode key of bank 'west': {key}"):
        consortium_up(root, timeout=START_TIMEOUT)
    assert read_records(Layout.at(root).pids) == []
    assert processes_mentioning(str(root)) == []


def test_up_stops_what_it_started_when_a_bank_cannot_connect(second):
    root, _ = second
    _, other_ca = pki.make_ca("another CA", 1)
    (Layout.at(root).bank_dir("west") / "ca.pem").write_bytes(pki.certificate_pem(other_ca))
    with pytest.raises(ConsortiumError, match="bank 'west' exited: TLS verification"):
        consortium_up(root, timeout=START_TIMEOUT)
    assert read_records(Layout.at(root).pids) == []
    assert processes_mentioning(str(root)) == []


def test_run_without_a_superlink_is_a_one_line_error(second):
    root, base = second
    with pytest.raises(ConsortiumError, match=f"no SuperLink answers at 127.0.0.1:{base}"):
        consortium_run(root, {"num-server-rounds": 1})
