"""A bank whose disk is full or read-only refuses cleanly before training: the write-ahead
spend cannot be written, so nothing is trained and nothing leaves. Real OS errors, no mocks:
ENOSPC from /dev/full, EACCES from a read-only state folder (as an ordinary user even when
the suite runs as root: root ignores file modes), EFBIG from the file-size limit."""

import json
import logging
import multiprocessing
import os
import resource
import shutil
import tempfile
from pathlib import Path

import pytest
from bank_messages import bank_context, proposal_message, train_message, write_bank_files
from conftest import run_cli, write_embedded
from flwr.app import Context, Message

import fedrisk.client.bank_client as bank_client_module
from fedrisk.client.client_app import app
from fedrisk.config import RunConfig
from fedrisk.data import read_table, split_table, write_table
from fedrisk.privacy.chain import LEDGER_DIRNAME, LEDGER_SUFFIX
from fedrisk.privacy.policy import BankPolicy

NOBODY = 65534
CONFIG = RunConfig(num_server_rounds=2, personalization="none", secure_aggregation=False,
                   local_epochs=1)
REFUSED = "bank northeast: refused: ledger-write"


@pytest.fixture
def bank_files():
    """A bank's files in a folder an ordinary user can read (pytest's tmp_path is root's)."""
    folder = Path(tempfile.mkdtemp(prefix="fedrisk-disk-"))
    os.chmod(folder, 0o755)
    write_bank_files(folder, BankPolicy(**{**BankPolicy.deployment_default().__dict__,
                                            "secure_aggregation_required": False}))
    for path in folder.iterdir():
        os.chmod(path, 0o644)
    yield folder
    for path in folder.rglob("*"):  # the tests make the state read-only: writable again
        if path.is_dir():
            os.chmod(path, 0o700)
    shutil.rmtree(folder)


def context_for(folder: Path, run_id: str) -> Context:
    return bank_context(folder, RunConfig(**{**CONFIG.__dict__, "run_id": run_id}))


def in_child(work, *args) -> dict:
    """Run ``work(queue, *args)`` in a forked child; return what it reported (or its crash)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=work, args=(queue, *args))
    child.start()
    report = queue.get(timeout=120)
    child.join(timeout=60)
    return report


def answer(queue, context: Context, message: Message, setup) -> None:
    """In the child: apply ``setup``, send ``message`` to the bank, report reply and logs."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("fedrisk").addHandler(handler)
    trained = []
    bank_client_module.train_locally = lambda *a, **k: trained.append(1)
    try:
        setup()
        reply = app(message, context)
        queue.put({"error": reply.error.reason if reply.has_error() else None,
                   "logs": records, "trained": bool(trained)})
    except BaseException as error:  # noqa: BLE001 - report to the parent, never hang it
        queue.put({"error": f"child raised {type(error).__name__}: {error}", "logs": records,
                   "trained": bool(trained)})


def as_ordinary_user() -> None:
    """Root ignores file modes: drop to nobody, for whom a read-only folder is read-only."""
    if os.geteuid() == 0:
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def test_a_read_only_state_folder_refuses_a_run_before_anything_is_written(bank_files):
    earlier = context_for(bank_files, "earlier")
    assert not app(proposal_message(), earlier).has_error()  # the bank has taken part before
    ledger = next((bank_files / "state" / LEDGER_DIRNAME).glob(f"*{LEDGER_SUFFIX}"))
    before = ledger.read_bytes()
    for path in [bank_files / "state", *(bank_files / "state").rglob("*")]:
        if os.geteuid() == 0:  # the child runs as nobody: the bank's files are nobody's
            os.chown(path, NOBODY, NOBODY)
        os.chmod(path, 0o500 if path.is_dir() else 0o400)  # read-only, even for the owner
    report = in_child(answer, context_for(bank_files, "next"), proposal_message(), as_ordinary_user)
    assert report["error"] == REFUSED, report
    refusal = [line for line in report["logs"] if "ledger-write" in line]
    assert len(refusal) == 1 and "\n" not in refusal[0]
    assert str(ledger) in refusal[0] and "Permission denied" in refusal[0]
    assert not report["trained"] and ledger.read_bytes() == before


def test_a_spend_that_cannot_be_written_stops_the_round_before_training(bank_files):
    context = context_for(bank_files, "run")
    assert not app(proposal_message(), context).has_error()  # admitted: the next message trains
    message = train_message(context, 1)
    ledger = next((bank_files / "state" / LEDGER_DIRNAME).glob(f"*{LEDGER_SUFFIX}"))
    before = ledger.read_bytes()

    def full_disk() -> None:  # the ledger may not grow by one byte: EFBIG, a real write error
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before), resource.RLIM_INFINITY))

    report = in_child(answer, context, message, full_disk)
    assert report["error"] == REFUSED, report
    assert any(str(ledger) in line and "File too large" in line for line in report["logs"])
    assert not report["trained"]  # the write-ahead spend failed: nothing trained, nothing sent
    assert ledger.read_bytes() == before


def test_simulate_with_every_bank_out_of_disk_ends_in_one_line(tmp_path):
    """Every bank's ledger is /dev/full (ENOSPC): each refuses at the run's first message."""
    table_path, contract_path, table = write_embedded("credit_data", tmp_path)
    from fedrisk.data import Contract

    contract = Contract.load(contract_path)
    ledgers = []
    for bank_id, rows in split_table(table, n_banks=3, contract=contract, seed=0).items():
        write_table(rows, tmp_path / f"{bank_id}.csv", exact=True)  # as the bank reads it
        fingerprint = contract.fingerprint(read_table(tmp_path / f"{bank_id}.csv"))
        ledger = (tmp_path / "run" / "banks" / bank_id / LEDGER_DIRNAME
                  / f"{fingerprint[:16]}{LEDGER_SUFFIX}")
        ledger.parent.mkdir(parents=True)
        ledger.symlink_to("/dev/full")
        ledgers.append(ledger)
    result = run_cli("simulate", "--data", str(table_path), "--contract", str(contract_path),
                     "--banks", "3", "--rounds", "1", "--output-dir", str(tmp_path / "run"),
                     "--verbose")
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("error: no bank accepted the run: bank bank-1: refused: ledger-write; "
                    "bank bank-2: refused: ledger-write; bank bank-3: refused: ledger-write")
    assert "Traceback" not in result.stderr
    for ledger in ledgers:  # each bank's log names its ledger and the OS error
        assert f"{ledger}: [Errno 28] No space left on device" in result.stderr
        assert ledger.is_symlink() and not list(ledger.parent.glob("*.anchor"))
    assert json.loads((tmp_path / "run" / "refusals.json").read_text())["answers"]
