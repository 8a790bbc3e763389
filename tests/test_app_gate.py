"""The bank's app gate and approvals, without a consortium (the processes are tested in
tests/adversarial/test_unapproved_app.py): what is approved, how a refusal is recorded, how
a bank approves a new bundle, and what provisioning writes."""

import os
import stat
from pathlib import Path

import pytest
from conftest import run_cli
from flwr.app import Context, Message, RecordDict
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec
from flwr.supercore.task_identity import TaskIdentity

from fedrisk.client.app_gate import approval_refusal, bundle_digest, refuse_task
from fedrisk.client.executor import BankExecutor, task_flwr_home
from fedrisk.consortium import ConsortiumError, approve_app, init_consortium
from fedrisk.consortium.bundle import app_bundle, app_bundle_hash, default_app_dir
from fedrisk.consortium.layout import read_bank
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.privacy.policy import BankPolicy, PolicyError
from fedrisk.privacy.verify import read_ledger

APPROVED = "a" * 64
OTHER = "b" * 64


@pytest.fixture
def bank(tmp_path) -> dict:
    """A bank's files and node config, its policy approving APPROVED only."""
    embedded_banks("lending_club")["northeast"].to_csv(tmp_path / "data.csv", index=False)
    load_embedded("lending_club")[1].save(tmp_path / "contract.toml")
    BankPolicy.deployment_default(approved_apps=(APPROVED,)).save(tmp_path / "bank-policy.toml")
    return {"bank-id": "northeast", "data-path": str(tmp_path / "data.csv"),
            "contract-path": str(tmp_path / "contract.toml"),
            "state-dir": str(tmp_path / "state"),
            "policy-path": str(tmp_path / "bank-policy.toml")}


def test_only_a_hash_on_the_banks_list_is_approved(bank):
    assert approval_refusal(APPROVED, bank) is None
    refusal = approval_refusal(OTHER, bank)
    assert str(refusal) == "refused: approved-apps" and f"{OTHER} not approved" in refusal.detail


@pytest.mark.parametrize("damage", ["no policy-path", "missing file", "corrupt file",
                                    "invalid key"])
def test_without_a_valid_policy_nothing_is_approved(bank, tmp_path, damage):
    if damage == "no policy-path":
        del bank["policy-path"]
    elif damage == "missing file":
        (tmp_path / "bank-policy.toml").unlink()
    elif damage == "corrupt file":
        (tmp_path / "bank-policy.toml").write_text("approved-apps = [\n")
    else:
        (tmp_path / "bank-policy.toml").write_text(f'approved-apps = ["{APPROVED}"]\n'
                                                   "min-cohort = 1\n")
    refusal = approval_refusal(APPROVED, bank)
    assert refusal is not None and refusal.key == "approved-apps"
    assert "policy" in refusal.detail


def test_the_digest_is_computed_from_the_bundle_bytes():
    content = app_bundle()
    assert bundle_digest(content) == app_bundle_hash()
    assert bundle_digest(content + b"\0") != app_bundle_hash()


def query() -> Message:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 7, 1, 0
    return Message(RecordDict(), dst_node_id=1, message_type="query", group_id="0")


def test_a_refusal_is_signed_in_the_banks_ledger_and_says_only_the_key(bank):
    context = Context(run_id=7, node_id=1, node_config=bank, state=RecordDict(), run_config={})
    reply = refuse_task(query(), context, approval_refusal(OTHER, bank))
    assert reply.has_error() and not reply.has_content()
    assert reply.error.reason == "bank northeast: refused: approved-apps"
    ledgers = list((Path(bank["state-dir"]) / "ledgers").glob("*.jsonl"))
    entries = read_ledger(ledgers[0])
    assert [e.kind for e in entries] == ["genesis", "refusal"]
    assert entries[1].body["policy_key"] == "approved-apps"
    assert entries[1].body["run_id"] == "7" and OTHER in entries[1].body["reason"]


def test_a_bank_that_cannot_open_its_ledger_still_refuses_at_once(bank):
    del bank["data-path"]
    context = Context(run_id=7, node_id=1, node_config=bank, state=RecordDict(), run_config={})
    reply = refuse_task(query(), context, approval_refusal(OTHER, bank))
    assert reply.error.reason == "bank northeast: refused: approved-apps"


def test_approve_adds_a_hash_once_and_keeps_the_rest_of_the_policy(bank, tmp_path):
    before = BankPolicy.load(tmp_path / "bank-policy.toml")
    assert approve_app(tmp_path, fab_hash=OTHER.upper()) == OTHER
    assert approve_app(tmp_path, fab_hash=OTHER) == OTHER
    after = BankPolicy.load(tmp_path / "bank-policy.toml")
    assert after.approved_apps == (APPROVED, OTHER)
    assert after.split_seed == before.split_seed
    assert stat.S_IMODE((tmp_path / "bank-policy.toml").stat().st_mode) == 0o600


def test_approve_builds_the_reviewed_app_and_records_its_bundle_hash(bank, tmp_path):
    assert approve_app(tmp_path, app_dir=default_app_dir()) == app_bundle_hash()
    assert app_bundle_hash() in BankPolicy.load(tmp_path / "bank-policy.toml").approved_apps


def test_approve_rejects_bad_input_with_one_line(bank, tmp_path):
    with pytest.raises(ConsortiumError, match="exactly one of"):
        approve_app(tmp_path)
    with pytest.raises(ConsortiumError, match="not a Flower app"):
        approve_app(tmp_path, app_dir=tmp_path / "nowhere")
    with pytest.raises(PolicyError, match="not a SHA-256"):
        approve_app(tmp_path, fab_hash="1234")
    result = run_cli("consortium", "approve", str(tmp_path / "elsewhere"), "--fab-hash", OTHER)
    assert result.returncode == 2 and "bank policy not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_writes_each_bank_a_policy_approving_the_shipped_app(tmp_path):
    provisioned = init_consortium(tmp_path / "c", ["northeast", "midwest"], base_port=41000)
    for bank in ("northeast", "midwest"):
        folder = provisioned.layout.bank_dir(bank)
        policy = BankPolicy.load(folder / "bank-policy.toml")
        assert policy.approved_apps == (app_bundle_hash(),)
        assert policy.dp_required and policy.secure_aggregation_required
        node = read_bank(folder).node
        assert node.bank_id == bank
        line = [s for s in provisioned.walkthrough if s.party == bank][-1].lines[-1]
        assert "policy-path='$PWD/bank-policy.toml'" in line
        assert "--isolation process" in line and "fedrisk.client.executor serve" in line
        assert "--parent-pid $!" in line
    seeds = {BankPolicy.load(provisioned.layout.bank_dir(b) / "bank-policy.toml").split_seed
             for b in ("northeast", "midwest")}
    assert len(seeds) == 2  # each bank's own split


def spec(task_type: TaskType) -> ExecutionSpec:
    return ExecutionSpec(task_type=task_type, runtime_api_address="127.0.0.1:1", token="0" * 64,
                         insecure=True, root_certificates_path=None,
                         runtime_dependency_install=False, parent_pid=None,
                         suppress_output=False, task_id=1)


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_a_bank_executor_takes_clientapp_tasks_only(mode):
    executor = BankExecutor(mode)
    types, fabs = executor.get_eligible_capacity(set(TaskType))
    assert types == {TaskType.CLIENT_APP} and fabs == set()
    for other in set(TaskType) - {TaskType.CLIENT_APP}:
        assert executor.launch(spec(other)).status == "failed"
    assert executor.forked == set() and executor.spawned == []


def test_each_task_installs_into_a_fresh_private_flower_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    with task_flwr_home() as first:
        assert first.parent == tmp_path / "tasks" and list(first.iterdir()) == []
        assert stat.S_IMODE(first.stat().st_mode) == 0o700
        assert os.environ["FLWR_HOME"] == str(first)
    with task_flwr_home() as second:
        assert second != first
    assert not first.exists() and not second.exists()
