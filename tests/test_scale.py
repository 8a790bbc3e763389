"""Consortia of many banks: SecAgg+ neighbourhoods and weights, per-process caches, output."""

import json
import math
import re

import numpy as np
import pytest
from conftest import printed_summary, run_cli, write_embedded
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

import fedrisk.cli as cli
from fedrisk.client.bank import bank_for_context
from fedrisk.client.secagg import check_request
from fedrisk.config import RunConfig
from fedrisk.data import load_embedded
from fedrisk.privacy.chain import ChainChecker
from fedrisk.privacy.ledger import EgressLedger
from fedrisk.privacy.policy import BankPolicy, PolicyRefusal
from fedrisk.server.run_record import natural_key
from fedrisk.server.secagg import FULL_GRAPH_BANKS, secagg_counts, weight_bound
from fedrisk.simulations.runner import _largest_published_size

ANSI = re.compile(r"\x1b\[")


def setup_request(banks: int, shares: int, threshold: int) -> ConfigRecord:
    """The setup record Flower's workflow sends to every bank."""
    return ConfigRecord({Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: banks,
                         Key.SHARE_NUMBER: shares, Key.THRESHOLD: threshold,
                         Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 4194304,
                         Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 4096.0})


@pytest.mark.parametrize("banks", [3, 5, 10, 11, 20, 32, 33, 100, 1000])
def test_neighbourhoods_are_logarithmic_above_ten_banks_and_every_bank_accepts_them(banks):
    shares, threshold = secagg_counts(RunConfig(min_banks=banks))
    if banks <= FULL_GRAPH_BANKS:
        assert shares == banks  # small consortia keep the full graph
    else:
        assert shares == 2 * math.ceil(math.log2(banks)) + 1 < banks and shares % 2 == 1
    assert threshold > shares / 2  # no split view can collect both secrets of one bank
    for policy in (BankPolicy.deployment_default([]), BankPolicy.simulation_default()):
        assert threshold / shares >= policy.min_secagg_threshold
        assert shares >= policy.min_cohort
        check_request(setup_request(banks, shares, threshold), SecAggPlusState(), policy)
    assert shares - threshold >= 1  # each neighbourhood tolerates a dropout


def test_a_bank_refuses_a_neighbourhood_below_its_threshold_or_cohort():
    policy = BankPolicy.deployment_default([])
    with pytest.raises(PolicyRefusal, match="min-secagg-threshold"):
        check_request(setup_request(100, 15, 8), SecAggPlusState(), policy)  # 8/15 < 0.6


def test_the_maximum_weight_bounds_every_published_size_within_two():
    for size in (1, 277, 1024, 1025, 11_458, 100_000):
        assert size <= weight_bound(size) < 2 * size + 1
    table, contract = load_embedded("lending_club")
    banks = {f"bank-{i}": table.iloc[: 300 * i] for i in range(1, 8)}
    public = BankPolicy.simulation_default()
    private = BankPolicy.deployment_default([])  # sizes leave DP-noised (σ = 20)
    largest_train = round(len(banks["bank-7"]) * 0.8) + 1
    assert _largest_published_size(banks, public) == largest_train
    assert _largest_published_size(banks, private) == largest_train + 6 * 20


def test_many_banks_sparse_secagg_follows_the_data_and_prints_a_summary(tmp_path):
    """12 banks: a 9-bank SecAgg+ neighbourhood, the weight bound from the tables, no colours;
    without SecAgg+ the coordinator receives each bank's update (so that the one-aggregate
    assertion of test_simulation can fail)."""
    write_embedded("lending_club", tmp_path)  # pooled.csv and contract.toml
    runs = {}
    # plain without the coordinator's norm bound: the two runs then differ only by SecAgg+
    plain = ["--no-secure-aggregation", "--run-config", "update-norm-bound=0"]
    for name, flags in (("secure", []), ("plain", plain)):
        result = run_cli("simulate", "--data", str(tmp_path / "pooled.csv"), "--contract",
                         str(tmp_path / "contract.toml"), "--banks", "12", "--rounds", "1",
                         "--no-dp", "--personalization", "none", "--output-dir",
                         str(tmp_path / name), *flags, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert not ANSI.search(result.stdout + result.stderr)  # piped: no colour codes
        runs[name] = (result.stdout, json.loads((tmp_path / name / "metrics.json")
                                                    .read_text()))
    stdout, secure = runs["secure"]
    facts = secure["config"]["secagg"]
    assert (facts["shares_per_bank"], facts["threshold_shares"]) == (9, 6)
    published = max(bank["n_train"] for bank in secure["banks"])
    assert published <= facts["max_weight"] <= 2 * published
    assert all(bank["rounds_joined"] == 1 for bank in secure["banks"])
    ids = [bank["id"] for bank in secure["banks"]]
    assert ids == sorted(ids, key=natural_key) and ids.index("bank-2") < ids.index("bank-10")
    assert stdout.index("bank-2 ") < stdout.index("bank-10 ")  # ≤ 20 banks: every row
    assert all(len(r["received_update_sha256"]) == 1 for r in secure["rounds"])
    plain = runs["plain"][1]
    assert all(len(r["received_update_sha256"]) == 12 for r in plain["rounds"])
    # a sparse neighbourhood still aggregates the same model as plain FedAvg (quantization)
    assert abs(secure["final"]["auc"] - plain["final"]["auc"]) <= 0.005


def test_a_worker_serving_many_banks_loads_each_table_once(tmp_path):
    table, contract = load_embedded("lending_club")
    contract.save(tmp_path / "contract.toml")
    config = RunConfig(output_dir=str(tmp_path)).to_run_config()
    contexts = []
    for i in range(12):  # more banks than the old cache of 8 held
        table.iloc[400 * i: 400 * (i + 1)].to_csv(tmp_path / f"bank-{i}.csv", index=False)
        contexts.append(Context(run_id=1, node_id=i, state=RecordDict(), run_config=config,
                                node_config={"bank-id": f"bank-{i}",
                                             "data-path": str(tmp_path / f"bank-{i}.csv"),
                                             "contract-path": str(tmp_path / "contract.toml")}))
    first = [bank_for_context(context) for context in contexts]
    again = [bank_for_context(context) for context in reversed(contexts)]
    assert all(a is b for a, b in zip(first, reversed(again), strict=True))


def test_ledger_appends_and_reads_verify_only_new_lines(tmp_path, monkeypatch):
    ledger = EgressLedger.for_bank(tmp_path, "bank-1", "ab" * 32)
    checked = []
    original = ChainChecker.check
    monkeypatch.setattr(ChainChecker, "check", lambda self, raw: checked.append(raw) or
                        original(self, raw))
    for i in range(200):
        ledger.append("note", {"event": "round", "i": i})
        assert ledger.head_hash and ledger.entry_count and ledger.privacy_history(None) == []
    assert len(checked) == 200  # each line once: no re-verification of the whole chain


def fake_metrics(banks: int) -> dict:
    rng = np.random.default_rng(0)
    rows = [{"id": f"bank-{i}", "n_train": int(rng.integers(200, 9000)),
             "n_test": int(rng.integers(50, 2000)), "auc": float(rng.uniform(0.5, 0.9)),
             "auc_noise_sd": 0.1, "personalized_auc": float(rng.uniform(0.5, 0.9)),
             "epsilon": float(rng.uniform(2.9, 3.0)), "epsilon_lifetime": None,
             "epsilon_eval": 0.99, "noise_multiplier": 1.2, "delta_below_1_over_n": True}
            for i in range(1, banks + 1)]
    for row in rows:
        row["epsilon_lifetime"] = row["epsilon"]
    return {"privacy": "DP-SGD (record-level)", "banks": rows, "baselines": {},
            "final": {"auc": 0.7, "auc_noise_sd": 0.02, "brier": 0.05,
                      "personalized_auc": None}}


def test_above_twenty_banks_the_table_is_a_summary_unless_asked(monkeypatch):
    metrics = fake_metrics(60)
    text = printed_summary(monkeypatch, metrics, show_banks=False, width=140)
    worst = sorted(metrics["banks"], key=lambda b: b["auc"])[:cli.WORST_BANKS]
    rows = [line for line in text.splitlines() if re.match(r"\s+bank-\d+\s", line)]
    assert [line.split()[0] for line in rows] == [b["id"] for b in worst]
    for header in ("min", "10%", "median", "90%", "max", "60 banks", "--show-banks"):
        assert header in text
    aucs = sorted(b["auc"] for b in metrics["banks"])
    assert f"{np.median(aucs):.3f}" in text and f"{aucs[0]:.3f}" in text
    full = printed_summary(monkeypatch, metrics, show_banks=True, width=140)
    rows = [line.split()[0] for line in full.splitlines() if re.match(r"\s+bank-\d+\s", line)]
    assert rows == [f"bank-{i}" for i in range(1, 61)]
    few = printed_summary(monkeypatch, fake_metrics(20), show_banks=False, width=140)
    assert "median" not in few and "bank-20 " in few
