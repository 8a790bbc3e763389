"""A bank's ledger restored from an older backup together with its anchor, or deleted with
it, verifies on its own: only the coordinator's record of the head the bank last reported
can notice. The bank must then refuse (`refused: ledger-rollback`) instead of training on a
lowered lifetime ε."""

import json
import shutil

from conftest import simulate

FAST = ("--rounds", "1", "--personalization", "none")


def refusals_of(metrics: dict, bank: str) -> list[str]:
    return [f for r in metrics["rounds"] for f in r["failures"] if f.startswith(f"bank {bank}")]


def test_a_rolled_back_or_deleted_ledger_is_refused_by_the_coordinators_record(tmp_path):
    out = tmp_path / "run"
    simulate(out, *FAST)
    west, midwest = out / "banks" / "west", out / "banks" / "midwest"
    backup = tmp_path / "west-backup"
    shutil.copytree(west, backup)  # ledger, anchor and key: a consistent older state
    second = simulate(out, *FAST)
    record = json.loads((out / "ledger-heads.json").read_text())
    assert set(record) == {b["id"] for b in second["banks"]}
    (head,) = record["west"].values()
    reported = next(b for b in second["banks"] if b["id"] == "west")
    assert (head["entries"], head["head"]) == (reported["ledger_entries"],
                                               reported["ledger_head"])

    shutil.rmtree(west)
    shutil.copytree(backup, west)  # one attack: roll west's whole state back
    shutil.rmtree(midwest)  # the other: delete midwest's ledger, anchor and key (fresh genesis)
    third = simulate(out, *FAST)
    for bank in ("west", "midwest"):
        refused = refusals_of(third, bank)
        assert refused and set(refused) == {f"bank {bank}: refused: ledger-rollback"}
    assert third["rounds"][0]["banks_trained"] == 3
