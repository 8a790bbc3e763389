"""Attacks on a bank's ledger that would lower its lifetime ε, and how each is stopped.

Before the anchor, each of these went unnoticed: the bank reopened the rolled-back
ledger and carried on at ε 7.9 instead of 11.0 (or 0 after deleting it), and
`fedrisk audit verify` exited 0. Now each stops the bank with one line saying what
happened and how to resolve it, and `audit verify` exits 1 naming the mismatch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from fedrisk.client.bank import BankSource, load_bank
from fedrisk.client.bank_client import BankClient
from fedrisk.config import RunConfig
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.privacy.chain import LedgerRollback
from fedrisk.privacy.ledger import EgressLedger

FP = "ab12" * 16
BANK = "northeast"


def spend(run_id: str, epsilon: float) -> dict:
    """A privacy_spend whose ε composes the bank's lifetime (as the bank client writes it)."""
    return {"run_id": run_id, "round": 1, "noise_multiplier": 0.8, "sample_rate": 0.05,
            "steps": 400, "epsilon": epsilon, "epsilon_lifetime": epsilon, "delta": 1e-5,
            "accountant": "rdp"}


class Spent:
    """A bank's ledger after two runs (lifetime ε 7.9, then 11.0) and a copy taken between."""

    def __init__(self, state: Path, fingerprint: str = FP) -> None:
        self.state = state
        self.fingerprint = fingerprint
        ledger = self.open()
        ledger.append("privacy_spend", spend("run-1", 7.9))
        self.older_ledger = ledger.path.read_bytes()
        self.older_anchor = ledger.anchor_path.read_bytes()
        ledger.append("privacy_spend", spend("run-2", 11.0))
        ledger.append("egress", {"run_id": "run-2", "round": 1, "message_kind": "train"})
        self.path, self.anchor = ledger.path, ledger.anchor_path
        self.count, self.head = ledger.entry_count, ledger.head_hash  # what the bank reported

    def open(self) -> EgressLedger:
        return EgressLedger.for_bank(self.state, BANK, self.fingerprint)

    def roll_back(self) -> None:
        self.path.write_bytes(self.older_ledger)

    def truncate(self) -> None:
        self.path.write_bytes(b"".join(self.path.read_bytes().splitlines(keepends=True)[:-1]))

    def delete(self) -> None:
        self.path.unlink()


ATTACKS = {
    "rolled back to an older valid copy": (Spent.roll_back, "entries were cut off or an older"),
    "truncated after a valid entry": (Spent.truncate, "has 3 entries but its anchor records 4"),
    "ledger deleted, anchor kept": (Spent.delete, "has 0 entries but its anchor records 4"),
}


@pytest.fixture
def spent(tmp_path: Path) -> Spent:
    return Spent(tmp_path / "state")


def assert_one_line_with_advice(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert "restore the newest copy of the ledger (never an older backup)" in message
    assert "fedrisk audit verify" in message and "retire the table" in message


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_rolled_back_ledger_stops_the_bank(spent: Spent, attack: str) -> None:
    tamper, needle = ATTACKS[attack]
    tamper(spent)
    tampered = spent.path.read_bytes() if spent.path.exists() else b""
    for _ in range(2):  # and it stays stopped: the first refusal wrote nothing
        with pytest.raises(LedgerRollback, match=needle) as error:
            spent.open()
        assert_one_line_with_advice(error)
        assert spent.path.read_bytes() == tampered  # no entry appended, no fresh genesis


def test_audit_verify_exits_1_naming_each_mismatch(tmp_path: Path) -> None:
    banks = {attack: Spent(tmp_path / f"bank-{i}") for i, attack in enumerate(ATTACKS)}
    before = run_cli("audit", "verify", str(tmp_path))
    assert before.returncode == 0 and before.stdout.count("OK") == len(ATTACKS)
    for attack, spent in banks.items():
        ATTACKS[attack][0](spent)
    after = run_cli("audit", "verify", str(tmp_path))
    assert after.returncode == 1, after.stdout + after.stderr
    lines = after.stdout.splitlines()
    assert len(lines) == len(ATTACKS) and all(line.startswith("FAIL") for line in lines)
    for spent, line in zip(banks.values(), lines, strict=True):
        assert str(spent.path) in line and "anchor records 4" in line


def test_a_rollback_under_an_open_ledger_stops_the_next_read(spent: Spent) -> None:
    ledger = spent.open()
    assert ledger.last_epsilon() == 11.0
    spent.roll_back()
    with pytest.raises(LedgerRollback, match="shrank") as error:
        ledger.privacy_history()
    assert_one_line_with_advice(error)


def test_ledger_and_anchor_deleted_are_caught_by_the_head_the_bank_last_reported(
    spent: Spent,
) -> None:
    spent.delete()
    spent.anchor.unlink()
    fresh = spent.open()  # nothing on the bank's disk remembers the lost history
    assert fresh.entry_count == 1 and fresh.last_epsilon() is None
    with pytest.raises(LedgerRollback, match="has 1 entries but this bank last reported 4"
                       ) as error:
        fresh.check_known_head(spent.count, spent.head)
    assert_one_line_with_advice(error)


def test_ledger_and_anchor_rolled_back_together_are_caught_by_the_known_head(
    spent: Spent,
) -> None:
    spent.roll_back()
    spent.anchor.write_bytes(spent.older_anchor)  # a whole state dir restored from a backup
    ledger = spent.open()
    assert ledger.last_epsilon() == 7.9
    with pytest.raises(LedgerRollback, match="last reported 4"):
        ledger.check_known_head(spent.count, spent.head)


# ----- the bank itself refuses to train -------------------------------------------


@pytest.fixture
def bank_files(tmp_path: Path) -> tuple[BankSource, RunConfig]:
    table = embedded_banks("lending_club")[BANK]
    _, contract = load_embedded("lending_club")
    table.to_csv(tmp_path / f"{BANK}.csv", index=False)
    contract.save(tmp_path / "contract.toml")
    source = BankSource(BANK, tmp_path / f"{BANK}.csv", tmp_path / "contract.toml",
                        tmp_path / "state")
    config = RunConfig(num_server_rounds=2, target_epsilon=20.0, personalization="none",
                       privacy_budget_scope="dataset", output_dir=str(tmp_path))
    return source, config


def test_a_bank_whose_ledger_was_rolled_back_refuses_to_train(bank_files) -> None:
    source, config = bank_files
    bank = load_bank(source, config)
    spent = Spent(source.state_dir, bank.fingerprint)
    client = BankClient(bank, config, run_id=3)
    spent.roll_back()
    with pytest.raises(LedgerRollback) as error:
        client.fit(client.get_parameters({}), {"server-round": 1})
    assert_one_line_with_advice(error)
    assert spent.path.read_bytes() == spent.older_ledger  # it charged and sent nothing
    with pytest.raises(LedgerRollback, match="older copy restored"):
        load_bank(source, config)  # a new process of the bank stops when it opens the ledger
