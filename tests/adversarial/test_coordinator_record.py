"""A bank's ledger restored from an older backup together with its anchor, or deleted with
it, verifies on its own: only the coordinator's record of the head the bank last reported
can notice. The bank must then refuse (`refused: ledger-rollback`) instead of training on a
lowered lifetime ε."""

import json
import shutil

from conftest import simulate

FAST = ("--rounds", "1", "--personalization", "none")


def west_refusals(metrics: dict) -> list[str]:
    return [f for r in metrics["rounds"] for f in r["failures"] if f.startswith("bank west")]


def test_a_rolled_back_or_deleted_ledger_is_refused_by_the_coordinators_record(tmp_path):
    out = tmp_path / "run"
    simulate(out, *FAST)
    west = out / "banks" / "west"
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
    shutil.copytree(backup, west)  # the attack: roll the whole state back
    rolled_back = simulate(out, *FAST)
    assert west_refusals(rolled_back) and all(
        f == "bank west: refused: ledger-rollback" for f in west_refusals(rolled_back))
    assert rolled_back["rounds"][0]["banks_trained"] == 4

    shutil.rmtree(west)  # the other attack: delete ledger, anchor and key (fresh genesis)
    deleted = simulate(out, *FAST)
    assert west_refusals(deleted) == ["bank west: refused: ledger-rollback"] * len(
        west_refusals(deleted)) and west_refusals(deleted)
