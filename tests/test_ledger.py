"""Signed egress ledger: chain verification, tamper detection, anchor, pinning, keys, concurrency.

Attacks that roll a ledger back are in tests/adversarial/test_ledger_rollback.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrisk.privacy.anchor import anchor_path, read_anchor, write_anchor
from fedrisk.privacy.chain import LedgerError, LedgerRollback, TrustedKeys
from fedrisk.privacy.keys import (
    KeyFileError,
    load_or_create_signing_key,
    load_public_key,
    public_key_pem,
)
from fedrisk.privacy.ledger import EgressLedger, egress_body
from fedrisk.privacy.verify import read_ledger, verify_ledger, verify_path

FP = "ab12" * 16  # a 64-hex-char dataset fingerprint
BANK = "bank-0"


def spend(run_id: str, rnd: int, epsilon: float, steps: int = 10) -> dict:
    return {
        "run_id": run_id,
        "round": rnd,
        "noise_multiplier": 1.1,
        "sample_rate": 0.01,
        "steps": steps,
        "epsilon": epsilon,
        "delta": 1e-5,
        "accountant": "rdp",
    }


def egress(run_id: str, rnd: int, epsilon: float) -> dict:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3)}
    metrics = {"loss": 0.5, "num_examples": 100}
    return egress_body(
        run_id=run_id,
        round=rnd,
        message_kind="train",
        arrays=arrays,
        metrics=metrics,
        epsilon=epsilon,
        secure_aggregation=True,
    )


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def ledger_path(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    """Genesis + 5 entries = 6 lines; last ε is 1.7."""
    path = tmp_path / "ledger.jsonl"
    ledger = EgressLedger(path, key, BANK, FP)
    ledger.append("privacy_spend", spend("run-a", 1, 1.2))
    ledger.append("egress", egress("run-a", 1, 1.2))
    ledger.append("privacy_spend", spend("run-a", 2, 1.7))
    ledger.append("egress", egress("run-a", 2, 1.7))
    ledger.append("note", {"text": "run finished"})
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def canonical(obj: dict) -> bytes:
    """The documented format, reimplemented independently as an outside auditor would."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def forge_from(path: Path, start: int, forger: Ed25519PrivateKey, edit: dict) -> None:
    """Edit entry ``start``'s body; re-hash and re-sign it and every later entry."""
    entries = [json.loads(line) for line in lines_of(path)]
    entries[start]["body"].update(edit)
    for i in range(start, len(entries)):
        entry = entries[i]
        entry["prev_hash"] = entries[i - 1]["entry_hash"] if i else "0" * 64
        payload = canonical(
            {k: entry[k] for k in ("index", "timestamp", "kind", "body", "prev_hash")}
        )
        entry["entry_hash"] = hashlib.sha256(payload).hexdigest()
        entry["signature"] = base64.b64encode(forger.sign(payload)).decode()
    path.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))


def test_good_ledger_verifies(ledger_path: Path, key: Ed25519PrivateKey) -> None:
    result = verify_ledger(ledger_path, TrustedKeys(every_bank=key.public_key()))
    assert result.ok, result.reason
    assert result.anchored
    assert (result.entries, result.first_bad_index, result.reason) == (6, None, None)
    assert result.last_epsilon == pytest.approx(1.7)
    assert (result.bank_id, result.dataset_fingerprint) == (BANK, FP)
    assert result.last_hash == json.loads(lines_of(ledger_path)[-1])["entry_hash"]
    assert str(result).startswith("OK")
    entries = read_ledger(ledger_path)
    assert [e.kind for e in entries] == [
        "genesis", "privacy_spend", "egress", "privacy_spend", "egress", "note",
    ]  # fmt: skip


def test_flipped_byte_in_body_is_detected(ledger_path: Path) -> None:
    lines = lines_of(ledger_path)
    line = bytearray(lines[3])
    pos = line.index(b'"epsilon":1.7') + len(b'"epsilon":')
    line[pos] ^= 0x01  # "1" -> "0": still valid JSON, different content
    lines[3] = bytes(line)
    ledger_path.write_bytes(b"".join(lines))
    result = verify_ledger(ledger_path)
    assert (result.ok, result.first_bad_index, result.entries) == (False, 3, 3)
    assert "entry_hash" in result.reason
    assert result.last_epsilon == pytest.approx(1.2)  # only the intact prefix counts
    assert str(result).startswith("FAIL") and "\n" not in str(result)


def test_deleted_middle_line_is_detected(ledger_path: Path) -> None:
    lines = lines_of(ledger_path)
    del lines[3]
    ledger_path.write_bytes(b"".join(lines))
    result = verify_ledger(ledger_path)
    assert (result.ok, result.first_bad_index) == (False, 3)
    assert "index is 4, expected 3" in result.reason


def test_reordered_lines_are_detected(ledger_path: Path) -> None:
    lines = lines_of(ledger_path)
    lines[2], lines[3] = lines[3], lines[2]
    ledger_path.write_bytes(b"".join(lines))
    result = verify_ledger(ledger_path)
    assert (result.ok, result.first_bad_index) == (False, 2)


def test_entry_resigned_with_another_key_is_detected(ledger_path: Path) -> None:
    forge_from(ledger_path, 3, Ed25519PrivateKey.generate(), {"epsilon": 0.1})
    result = verify_ledger(ledger_path)
    assert (result.ok, result.first_bad_index) == (False, 3)
    assert "signature" in result.reason
    assert result.last_epsilon == pytest.approx(1.2)


def test_whole_ledger_rewritten_under_new_key_fails_only_against_trusted_key(
    ledger_path: Path, key: Ed25519PrivateKey
) -> None:
    forger = Ed25519PrivateKey.generate()
    forge_from(ledger_path, 0, forger, {"public_key": public_key_pem(forger)})
    assert "replaced" in verify_ledger(ledger_path).reason  # the anchor still names the old head
    forged = read_ledger_unchecked(ledger_path)
    write_anchor(anchor_path(ledger_path), len(forged), forged[-1]["entry_hash"])
    assert verify_ledger(ledger_path).ok  # a forger who rewrites the anchor: why keys are pinned
    result = verify_ledger(ledger_path, TrustedKeys(every_bank=key.public_key()))
    assert (result.ok, result.first_bad_index) == (False, 0)
    assert "trusted public key" in result.reason


def test_deleted_last_line_is_invisible_to_the_chain_but_not_to_the_anchor(
    ledger_path: Path,
) -> None:
    head = verify_ledger(ledger_path).last_hash
    ledger_path.write_bytes(b"".join(lines_of(ledger_path)[:-1]))
    result = verify_ledger(ledger_path)
    assert (result.ok, result.entries, result.first_bad_index) == (False, 5, 5)
    assert "5 entries but its anchor records 6" in result.reason
    anchor_path(ledger_path).unlink()  # without the anchor only the reported head shows it
    result = verify_ledger(ledger_path)
    assert result.ok and result.entries == 5 and not result.anchored
    assert result.last_hash != head


def test_torn_last_line_is_reported(ledger_path: Path) -> None:
    data = ledger_path.read_bytes()
    ledger_path.write_bytes(data[:-20])
    result = verify_ledger(ledger_path)
    assert (result.ok, result.first_bad_index) == (False, 5)
    assert "incomplete" in result.reason


def test_opening_a_broken_ledger_raises(ledger_path: Path, key: Ed25519PrivateKey) -> None:
    lines = lines_of(ledger_path)
    del lines[2]
    ledger_path.write_bytes(b"".join(lines))
    with pytest.raises(LedgerError, match="broken at entry 2"):
        EgressLedger(ledger_path, key, BANK, FP)


def test_reopen_with_other_fingerprint_bank_or_key_raises(
    ledger_path: Path, key: Ed25519PrivateKey
) -> None:
    with pytest.raises(LedgerError, match="dataset_fingerprint"):
        EgressLedger(ledger_path, key, BANK, "cd34" * 16)
    with pytest.raises(LedgerError, match="bank_id"):
        EgressLedger(ledger_path, key, "bank-1", FP)
    with pytest.raises(LedgerError, match="different signing key"):
        EgressLedger(ledger_path, Ed25519PrivateKey.generate(), BANK, FP)
    reopened = EgressLedger(ledger_path, key, BANK, FP)
    reopened.append("note", {"text": "second run"})
    assert verify_ledger(ledger_path).entries == 7


def test_privacy_history_filters_by_run(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    ledger = EgressLedger(tmp_path / "l.jsonl", key, BANK, FP)
    ledger.append("privacy_spend", spend("run-a", 1, 0.5, steps=10))
    ledger.append("privacy_spend", spend("run-a", 2, 0.8, steps=12))
    ledger.append("privacy_spend", spend("run-b", 1, 1.1, steps=7))
    assert ledger.privacy_history() == [(1.1, 0.01, 10), (1.1, 0.01, 12), (1.1, 0.01, 7)]
    assert ledger.privacy_history("run-a") == [(1.1, 0.01, 10), (1.1, 0.01, 12)]
    assert ledger.privacy_history("run-b") == [(1.1, 0.01, 7)]
    assert ledger.privacy_history("run-c") == []
    assert ledger.last_epsilon() == pytest.approx(1.1)


def test_two_instances_appending_alternately_keep_one_chain(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "l.jsonl"
    first, second = EgressLedger(path, key, BANK, FP), EgressLedger(path, key, BANK, FP)
    for i in range(4):
        first.append("note", {"from": "first", "i": i})
        second.append("note", {"from": "second", "i": i})
    result = verify_ledger(path)
    assert result.ok and result.entries == 9
    assert [e.index for e in first.entries()] == list(range(9))
    assert first.head_hash == second.head_hash == result.last_hash


def _append_many(state_dir: str, tag: str, count: int) -> None:
    ledger = EgressLedger.for_bank(Path(state_dir), BANK, FP)
    for i in range(count):
        ledger.append("note", {"from": tag, "i": i})


def test_two_processes_appending_concurrently_keep_one_chain(tmp_path: Path) -> None:
    EgressLedger.for_bank(tmp_path, BANK, FP)  # create key and genesis up front
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), t, 15)) for t in "ab"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    (result,) = verify_path(tmp_path)
    assert result.ok and result.entries == 31


def test_key_file_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys" / "signing_key.pem"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    again = load_or_create_signing_key(path)
    assert public_key_pem(again) == public_key_pem(key)
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "signing_key.pem"
    load_or_create_signing_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as info:
        load_or_create_signing_key(path)
    message = str(info.value)
    assert "\n" not in message and f"chmod 600 {path}" in message


def test_public_key_loads_from_pem_text_and_file(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    pem = public_key_pem(key)
    (tmp_path / "bank.pub").write_text(pem)
    assert public_key_pem(load_public_key(pem)) == pem
    assert public_key_pem(load_public_key(tmp_path / "bank.pub")) == pem
    with pytest.raises(KeyFileError):
        load_public_key(tmp_path / "missing.pub")


def test_for_bank_layout_and_modes(tmp_path: Path) -> None:
    state = tmp_path / "bank-state"
    ledger = EgressLedger.for_bank(state, BANK, FP)
    assert ledger.path == state / "ledgers" / f"{FP[:16]}.jsonl"
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ledger.path.parent.stat().st_mode) == 0o700
    assert ledger.anchor_path == state / "ledgers" / f"{FP[:16]}.anchor"
    assert stat.S_IMODE(ledger.anchor_path.stat().st_mode) == 0o600
    assert (state / "signing_key.pem").exists()
    genesis = ledger.entries()[0]
    assert genesis.kind == "genesis" and genesis.body["dataset_fingerprint"] == FP
    with pytest.raises(LedgerError, match="hex"):
        EgressLedger.for_bank(state, BANK, "../../etc/passwd")
    with pytest.raises(KeyFileError, match="does not exist"):
        EgressLedger.for_bank(state, BANK, FP, key_path=tmp_path / "nope.pem")


def test_verify_path_finds_ledgers_recursively_and_skips_other_jsonl(tmp_path: Path) -> None:
    EgressLedger.for_bank(tmp_path / "banks" / "b", "b", "cd34" * 16)
    EgressLedger.for_bank(tmp_path / "banks" / "a", "a", FP)
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    results = verify_path(tmp_path)
    assert [r.bank_id for r in results] == ["a", "b"]
    assert all(r.ok for r in results)
    assert verify_path(results[0].path)[0].ok


def test_egress_body_describes_what_leaves() -> None:
    weights = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    body = egress_body(
        run_id="run-a",
        round=3,
        message_kind="train",
        arrays={"w": weights, "scale": np.float64(2.0)},
        metrics={"loss": float("nan"), "n": np.int64(5), "acc": np.float32(0.5)},
        epsilon=2.5,
        secure_aggregation=False,
    )
    w, scale = body["arrays"]
    assert w == {
        "name": "w",
        "dtype": "<f4",
        "shape": [2, 3],
        "nbytes": 24,
        "sha256": hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest(),
    }
    assert scale["shape"] == [] and scale["nbytes"] == 8
    assert body["total_bytes"] == 32
    assert body["metrics"] == {"loss": "nan", "n": 5, "acc": 0.5}
    assert (body["run_id"], body["round"], body["message_kind"]) == ("run-a", 3, "train")
    assert (body["epsilon"], body["secure_aggregation"]) == (2.5, False)


def test_append_rejects_bad_input(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    ledger = EgressLedger(tmp_path / "l.jsonl", key, BANK, FP)
    with pytest.raises(LedgerError, match="kind"):
        ledger.append("genesis", {})
    with pytest.raises(LedgerError, match="lacks"):
        ledger.append("privacy_spend", {"run_id": "r"})
    with pytest.raises(LedgerError, match="strict JSON"):
        ledger.append("note", {"x": float("inf")})
    entry = ledger.append("refusal", {"reason": "budget", "shape": (2, 3), "n": np.int64(4)})
    assert entry.body == {"reason": "budget", "shape": [2, 3], "n": 4}
    assert verify_ledger(ledger.path).entries == 2


def read_ledger_unchecked(path: Path) -> list[dict]:
    return [json.loads(line) for line in lines_of(path)]


# ----- anchor -----------------------------------------------------------------------


def test_every_append_moves_the_anchor_to_the_new_head(tmp_path: Path, key) -> None:
    ledger = EgressLedger(tmp_path / "l.jsonl", key, BANK, FP)
    for i in range(3):
        entry = ledger.append("note", {"i": i})
        anchor = read_anchor(ledger.anchor_path)
        assert (anchor.count, anchor.head) == (entry.index + 1, entry.entry_hash)
        assert (ledger.entry_count, ledger.head_hash) == (anchor.count, anchor.head)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.anchor", "l.jsonl"]  # no temp left


def test_a_ledger_without_anchor_gets_one_and_a_signed_note_saying_so(
    ledger_path: Path, key: Ed25519PrivateKey
) -> None:
    anchor_path(ledger_path).unlink()  # a ledger written before anchors existed
    ledger = EgressLedger(ledger_path, key, BANK, FP)
    note = ledger.entries()[-1]
    assert (note.kind, note.body["event"], note.body["entries"]) == ("note", "anchor created", 6)
    assert read_anchor(ledger.anchor_path).count == 7
    assert verify_ledger(ledger_path).ok


def test_a_malformed_anchor_stops_the_bank_and_fails_verification(
    ledger_path: Path, key: Ed25519PrivateKey
) -> None:
    anchor_path(ledger_path).write_text('{"count": "many"}\n')
    with pytest.raises(LedgerError, match="is not a fedrisk-ledger-anchor/1 record"):
        EgressLedger(ledger_path, key, BANK, FP)
    result = verify_ledger(ledger_path)
    assert not result.ok and "anchor" in result.reason


def test_check_known_head_accepts_any_head_the_ledger_still_holds(ledger_path, key) -> None:
    ledger = EgressLedger(ledger_path, key, BANK, FP)
    entries = ledger.entries()
    for seen in (1, 3, len(entries)):
        ledger.check_known_head(seen, entries[seen - 1].entry_hash)
    with pytest.raises(LedgerRollback, match="has 6 entries but this bank last reported 9"):
        ledger.check_known_head(9, entries[-1].entry_hash)
    with pytest.raises(LedgerRollback, match="entry 2 is not the head"):
        ledger.check_known_head(3, entries[3].entry_hash)
    for bad in ((0, entries[0].entry_hash), (True, entries[0].entry_hash), (2, "abc")):
        with pytest.raises(LedgerError, match="known ledger"):
            ledger.check_known_head(*bad)


def _append_in_read_only_folder(folder: str, queue) -> None:
    """Child process: the ledger file is writable but its folder (the anchor's) is not."""
    if os.geteuid() == 0:  # root ignores file modes: act as an ordinary user
        os.setgid(65534)
        os.setuid(65534)
    os.chmod(folder, 0o500)
    try:
        ledger = EgressLedger.for_bank(Path(folder).parent, BANK, FP)
        ledger.append("egress", egress("run-a", 1, 1.0))
    except Exception as error:
        queue.put(f"{type(error).__name__}: {error}")
    else:
        queue.put("append returned")


def test_a_bank_that_cannot_write_its_anchor_fails_before_anything_leaves() -> None:
    state = Path(tempfile.mkdtemp(prefix="fedrisk-ledger-ro-"))
    try:
        ledger = EgressLedger.for_bank(state, BANK, FP)
        before = read_anchor(ledger.anchor_path)
        if os.geteuid() == 0:  # the child drops to an ordinary user, who must own the files
            for path in (state, *state.rglob("*")):
                os.chown(path, 65534, 65534)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_append_in_read_only_folder,
                            args=(str(ledger.path.parent), queue))
        child.start()
        message = queue.get(timeout=60)
        child.join(timeout=60)
        assert message.startswith("LedgerUnwritable: cannot write the ledger anchor")
        assert "must be treated as not sent" in message
        assert "\n" not in message
        os.chmod(ledger.path.parent, 0o700)
        assert read_anchor(ledger.anchor_path) == before  # the anchor lags the ledger by one
        assert verify_ledger(ledger.path).ok  # a ledger longer than its anchor is not a rollback
        reopened = EgressLedger.for_bank(state, BANK, FP)
        reopened.append("note", {"text": "disk fixed"})
        assert read_anchor(ledger.anchor_path).count == before.count + 2
    finally:
        shutil.rmtree(state)


# ----- pinning registered keys --------------------------------------------------------


def test_trusted_keys_pin_each_ledger_to_its_banks_registered_key(tmp_path: Path) -> None:
    state = tmp_path / "run" / "banks"
    for bank in ("a", "b", "c"):
        EgressLedger.for_bank(state / bank, bank, FP)
    registered = tmp_path / "ledger-keys"
    registered.mkdir()
    own_key = load_or_create_signing_key(state / "a" / "signing_key.pem")
    (registered / "a.pem").write_text(public_key_pem(own_key))
    (registered / "b.pem").write_text(public_key_pem(Ed25519PrivateKey.generate()))
    results = {r.bank_id or r.path.parts[-3]: r for r in verify_path(
        state, TrustedKeys.from_dir(registered))}
    assert results["a"].ok
    assert (results["b"].ok, results["b"].first_bad_index) == (False, 0)
    assert "differs from the trusted public key" in results["b"].reason
    assert "bank 'c' has no registered signing key" in results["c"].reason
    with pytest.raises(KeyFileError, match="no <bank>.pem"):
        TrustedKeys.from_dir(tmp_path / "run")
    with pytest.raises(KeyFileError, match="not a directory"):
        TrustedKeys.from_dir(registered / "a.pem")


def test_audit_verify_cli_pins_a_trusted_key(ledger_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    other.write_text(public_key_pem(Ed25519PrivateKey.generate()))
    result = run_cli("audit", "verify", str(ledger_path), "--trusted-key", str(other))
    assert result.returncode == 1 and "entry 0: genesis public key differs" in result.stdout
    result = run_cli("audit", "verify", str(ledger_path), "--trusted-key", str(other),
                     "--trusted-keys", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "not both" in result.stderr
