"""A bank crashed in the middle of writing a ledger line: a torn write, not a rollback.

An append is written and fsynced before the message it describes leaves, and the anchor
moves only after the line, so a partial last line (no newline) right after the anchored
head describes something that never left. The bank sets those bytes aside (never deleting
them), signs a `note` saying so and carries on. Before, it stopped and told the operator
to restore a backup, which is exactly a rollback. Anything else stays an error, and no
message sends the operator to an older backup.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from fedrisk.privacy.anchor import read_anchor
from fedrisk.privacy.chain import LedgerError, LedgerRollback
from fedrisk.privacy.ledger import EgressLedger
from fedrisk.privacy.verify import verify_ledger, verify_path

FP = "cd34" * 16
BANK = "west"
EPSILON = 2.5


def spend(run_id: str, epsilon: float) -> dict:
    return {"run_id": run_id, "round": 1, "noise_multiplier": 0.8, "sample_rate": 0.05,
            "steps": 400, "epsilon": epsilon, "delta": 1e-5, "accountant": "rdp"}


def open_ledger(state: Path) -> EgressLedger:
    return EgressLedger.for_bank(state, BANK, FP)


def tear_last_line(path: Path, keep: float = 0.5) -> bytes:
    """Cut the file in the middle of its last line, as a crash mid-write leaves it."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = start + int((len(data) - start) * keep)
    with open(path, "r+b") as handle:
        handle.truncate(cut)
    return data[start:cut]


def append_and_crash(state: Path) -> None:
    """A bank process killed while its append is half written (a real torn write)."""
    ledger = open_ledger(state)

    def half_write(fd: int, data) -> int:  # the disk took half the line, then the crash
        os.fsync(fd) if real_write(fd, bytes(data)[: len(data) // 2]) else None
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    real_write = os.write
    os.write = half_write
    ledger.append("egress", {"run_id": "run-2", "round": 1, "message_kind": "train"})


def torn_append(ledger: EgressLedger) -> bytes:
    """Append, then leave the ledger as a crash mid-append does: half a line, anchor unmoved."""
    anchor = ledger.anchor_path.read_bytes()
    ledger.append("egress", {"run_id": "run-1", "round": 1, "message_kind": "train"})
    ledger.anchor_path.write_bytes(anchor)
    return tear_last_line(ledger.path)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    ledger = open_ledger(tmp_path / "state")
    ledger.append("privacy_spend", spend("run-1", EPSILON))
    return tmp_path / "state"


def test_a_bank_killed_mid_append_sets_the_torn_line_aside_and_carries_on(state: Path) -> None:
    path = open_ledger(state).path
    anchored = read_anchor(path.with_suffix(".anchor"))
    crash = multiprocessing.get_context("fork").Process(target=append_and_crash, args=(state,))
    crash.start()
    crash.join(60)
    assert crash.exitcode == -signal.SIGKILL
    torn = path.read_bytes().split(b"\n")[-1]
    assert torn and not path.read_bytes().endswith(b"\n")  # a real partial line on disk

    ledger = open_ledger(state)  # the bank restarts

    entries = ledger.entries()
    assert [e.kind for e in entries] == ["genesis", "privacy_spend", "note"]
    note = entries[-1].body
    assert note["event"] == "torn line set aside"
    assert note["after_entry"] == anchored.count - 1 and note["bytes"] == len(torn)
    assert note["sha256"] == hashlib.sha256(torn).hexdigest()
    sidecar = path.parent / note["sidecar"]
    assert sidecar.read_bytes() == torn  # evidence kept, byte for byte
    assert oct(sidecar.stat().st_mode & 0o777) == "0o600"
    assert ledger.last_epsilon() == EPSILON  # nothing spent was lost
    ledger.append("privacy_spend", spend("run-2", EPSILON + 1))
    assert verify_ledger(path).ok
    # What `fedrisk audit verify STATE` checks: one ledger (the sidecar is no ledger), intact.
    assert [(r.path, r.ok) for r in verify_path(state)] == [(path, True)]


def test_a_torn_line_found_by_a_reader_is_set_aside_under_the_lock(state: Path) -> None:
    reader = open_ledger(state)
    torn = torn_append(open_ledger(state))  # another process of the bank crashed mid-append
    entries = reader.entries()
    assert [e.kind for e in entries] == ["genesis", "privacy_spend", "note"]
    assert (reader.path.parent / entries[-1].body["sidecar"]).read_bytes() == torn
    twice = torn_append(reader)  # and again: a second sidecar, none overwritten
    assert [e.kind for e in open_ledger(state).entries()][-2:] == ["note", "note"]
    sidecars = sorted(reader.path.parent.glob("*.partial"))
    assert len(sidecars) == 2 and {p.read_bytes() for p in sidecars} == {torn, twice}


def test_a_partial_line_after_a_missing_entry_stays_a_rollback(state: Path) -> None:
    ledger = open_ledger(state)
    ledger.append("egress", {"run_id": "run-1", "round": 1, "message_kind": "train"})
    data = ledger.path.read_bytes()
    lines = data.split(b"\n")
    ledger.path.write_bytes(b"\n".join(lines[:-3]) + b"\n" + lines[-2][:40])  # cut + torn
    before = ledger.path.read_bytes()
    with pytest.raises(LedgerRollback) as error:
        open_ledger(state)
    message = str(error.value)
    assert "\n" not in message and "partial last line" in message
    assert "never an older backup" in message and "from a backup" not in message
    assert ledger.path.read_bytes() == before  # nothing set aside, nothing appended
    assert not list(ledger.path.parent.glob("*.partial"))


def test_a_partial_line_after_unanchored_entries_is_not_repaired(state: Path) -> None:
    ledger = open_ledger(state)
    anchor = ledger.anchor_path.read_bytes()
    ledger.append("egress", {"run_id": "run-1", "round": 1, "message_kind": "train"})
    ledger.append("egress", {"run_id": "run-1", "round": 2, "message_kind": "train"})
    ledger.anchor_path.write_bytes(anchor)  # the anchor names an older head...
    tear_last_line(ledger.path)  # ...and the partial line does not follow it
    before = ledger.path.read_bytes()
    with pytest.raises(LedgerError) as error:
        open_ledger(state)
    message = str(error.value)
    assert "partial last line" in message and "does not follow the anchored head" in message
    assert "older backup" in message and "from a backup" not in message
    assert ledger.path.read_bytes() == before


def test_a_torn_ledger_without_its_anchor_is_not_repaired(state: Path) -> None:
    ledger = open_ledger(state)
    torn_append(ledger)
    ledger.anchor_path.unlink()
    before = ledger.path.read_bytes()
    with pytest.raises(LedgerError, match="no anchor") as error:
        open_ledger(state)
    assert "from a backup" not in str(error.value)
    assert ledger.path.read_bytes() == before


def test_a_broken_line_in_the_middle_never_sends_the_operator_to_a_backup(state: Path) -> None:
    ledger = open_ledger(state)
    ledger.append("egress", {"run_id": "run-1", "round": 1, "message_kind": "train"})
    lines = ledger.path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"steps":400', b'"steps":4')
    ledger.path.write_bytes(b"\n".join(lines))
    with pytest.raises(LedgerError, match="broken at entry 1") as error:
        open_ledger(state)
    message = str(error.value)
    assert "from a backup" not in message and "never an older backup" in message


def test_two_crashes_in_a_row_stay_repairable(state: Path) -> None:
    ledger = open_ledger(state)
    anchor = ledger.anchor_path.read_bytes()
    ledger.append("egress", {"run_id": "run-1", "round": 1, "message_kind": "train"})
    ledger.anchor_path.write_bytes(anchor)  # crash 1: between the line and its anchor
    restarted = open_ledger(state)  # the bank restarts: the anchor catches up
    assert read_anchor(restarted.anchor_path).count == restarted.entry_count == 3
    torn_append(restarted)  # crash 2: in the middle of the next line
    assert [e.kind for e in open_ledger(state).entries()][-2:] == ["egress", "note"]
