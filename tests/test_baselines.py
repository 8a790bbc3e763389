"""`--baselines`: the non-private references a risk modeller trusts, on the banks' own splits.

Called directly on the embedded lending_club banks (no Flower run): each bank's policy
split, the contract encoding, the same functions `fedrisk simulate --baselines` calls.
"""

import numpy as np
import pytest
from conftest import printed_summary

from fedrisk.config import RunConfig
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.privacy.policy import BankPolicy
from fedrisk.simulations import runner
from fedrisk.simulations.baselines import (
    centralized_gbdt_auc,
    centralized_logistic_auc,
    local_only_nonprivate_auc,
)

CENTRALIZED = ("centralized_mlp_auc", "centralized_logistic_auc", "centralized_gbdt_auc")


@pytest.fixture(scope="module")
def lending_club():
    """The five lending_club banks, their policy (seed 0, 20% test) and encoded splits."""
    banks = embedded_banks("lending_club", seed=0)
    _, contract = load_embedded("lending_club")
    policy = BankPolicy.simulation_default(0, 0.2)
    return banks, contract, policy, runner.bank_splits(banks, contract, policy)


@pytest.fixture(scope="module")
def baselines(lending_club):
    """metrics.json's baseline keys as `simulate --baselines` adds them (one short DP run's
    worth of epochs for the DP and MLP models; the scikit-learn references are unaffected)."""
    banks, contract, policy, _ = lending_club
    config = RunConfig.from_run_config({"dataset": "lending_club", "num-server-rounds": 1,
                                        "local-epochs": 1})
    metrics = {"banks": [{"id": bank_id} for bank_id in banks]}
    runner._add_baselines(metrics, banks, contract, policy, config)
    return metrics


def test_centralized_references_are_added_beside_the_existing_keys(baselines):
    refs = baselines["baselines"]
    for key in ("centralized_auc", "local_only_auc_mean", "local_only_private",
                "local_only_nonprivate_auc_mean", "centralized_best_auc", *CENTRALIZED):
        assert key in refs, key
    assert refs["local_only_private"] is True
    # the run's model is the MLP: the existing key and the new name are one number
    assert refs["centralized_auc"] == refs["centralized_mlp_auc"]
    assert refs["centralized_best_auc"] == max(refs[key] for key in CENTRALIZED)
    for key in CENTRALIZED:
        assert 0.70 <= refs[key] <= 0.90, (key, refs[key])


def test_every_bank_has_its_local_non_private_logistic_beside_local_dp(baselines):
    for bank in baselines["banks"]:
        assert 0.6 < bank["local_only_nonprivate_auc"] < 1.0, bank
        assert isinstance(bank["local_only_auc"], float), bank
    alone = [b["local_only_nonprivate_auc"] for b in baselines["banks"]]
    assert baselines["baselines"]["local_only_nonprivate_auc_mean"] == pytest.approx(
        np.mean(alone))


def test_pooled_logistic_learns_the_signal_and_shuffled_labels_score_chance(lending_club):
    """The 0.74 floor holds only if encoding and split are right: with each bank's train
    labels shuffled the same pipeline scores about 0.5."""
    splits = lending_club[3]
    assert centralized_logistic_auc(splits, seed=0) >= 0.74
    rng = np.random.default_rng(0)
    shuffled = {bank_id: (x_train, rng.permutation(y_train), x_test, y_test, grades)
                for bank_id, (x_train, y_train, x_test, y_test, grades) in splits.items()}
    assert abs(centralized_logistic_auc(shuffled, seed=0) - 0.5) < 0.08


def test_no_setting_is_tuned_on_the_test_split(lending_club, baselines):
    """Model choice sees train rows only: inverting every test label gives exactly 1 − AUC
    (a search that scored candidates on the test split would pick another model)."""
    splits = lending_club[3]
    flipped = {bank_id: (x_train, y_train, x_test, 1 - y_test, grades)
               for bank_id, (x_train, y_train, x_test, y_test, grades) in splits.items()}
    assert centralized_gbdt_auc(flipped, seed=0) == pytest.approx(
        1 - baselines["baselines"]["centralized_gbdt_auc"], abs=1e-12)
    west = splits["west"]
    alone = next(b for b in baselines["banks"] if b["id"] == "west")["local_only_nonprivate_auc"]
    assert local_only_nonprivate_auc((*west[:3], 1 - west[3], west[4]), seed=0) == pytest.approx(
        1 - alone, abs=1e-12)


def test_a_bank_with_a_single_default_gets_nan_not_a_crash(lending_club):
    x_train, y_train, x_test, y_test, grades = lending_club[3]["west"]
    y_one = np.zeros_like(y_train)
    y_one[np.flatnonzero(y_train)[0]] = 1
    assert np.isnan(local_only_nonprivate_auc((x_train, y_one, x_test, y_test, grades), seed=0))


def test_the_summary_shows_local_non_private_beside_local_dp_and_the_references(baselines,
                                                                               monkeypatch):
    metrics = {**baselines, "privacy": "DP-SGD (record-level)",
               "final": {"auc": 0.77, "brier": 0.05}}
    alone = {b["id"]: b["local_only_nonprivate_auc"] for b in metrics["banks"]}
    metrics["banks"] = [{**b, "n_train": 1000, "n_test": 250,
                         "auc": alone[b["id"]] + (0.01 if b["id"] == "west" else -0.01)}
                        for b in metrics["banks"]]
    text = printed_summary(monkeypatch, metrics)
    header = next(line for line in text.splitlines() if "local DP" in line)
    assert header.index("local DP") < header.index("local LR") < header.index("global")
    assert "LR: its non-private logistic regression" in " ".join(text.split())
    west = next(line for line in text.splitlines() if line.strip().startswith("west"))
    assert f"{alone['west']:.3f}" in west
    refs = metrics["baselines"]
    for key in CENTRALIZED:
        assert f"{refs[key]:.3f}" in text
    assert "beats a bank's own non-private logistic at 1 of 5 banks" in text


def test_the_personalized_column_appears_only_when_banks_fine_tuned(baselines, monkeypatch):
    def header(personalized: float | None) -> str:
        metrics = {**baselines, "privacy": "DP-SGD (record-level)",
                   "final": {"auc": 0.77, "brier": 0.05},
                   "banks": [{**b, "n_train": 1000, "n_test": 250, "auc": 0.7,
                              "personalized_auc": personalized} for b in baselines["banks"]]}
        text = printed_summary(monkeypatch, metrics)
        return next(line for line in text.splitlines() if "global" in line)

    assert "personalized" not in header(None)  # the default: no fine-tuning
    assert "personalized" in header(0.72)
