"""End-to-end simulations on Flower's engine with Opacus banks (no mocks)."""

import json

import numpy as np
import pytest
from conftest import run_cli, simulate

from fedrisk.data import embedded_banks, load_embedded
from fedrisk.errors import UserError
from fedrisk.models import load_model
from fedrisk.models.calibration import fit_histogram_calibration, histogram_calibration_facts
from fedrisk.models.histograms import eval_grid, histograms_from
from fedrisk.privacy.accounting import steps_per_epoch
from fedrisk.privacy.ledger import EgressLedger
from fedrisk.privacy.verify import verify_path
from fedrisk.simulations import SimulationRequest
from fedrisk.simulations import simulate as run_simulation
from fedrisk.simulations.exact import exact_evaluation


def test_dp_simulation_reaches_auc_floor_within_every_budget(dp_run):
    output, metrics = dp_run
    exact = exact_evaluation(output)  # offline, from the saved models and every bank's rows
    assert metrics["privacy"] == "DP-SGD (record-level)"
    assert metrics["config"]["secure_aggregation"] is True
    assert exact["auc"] >= 0.66
    # The reported AUC is read off noisy histograms: within the noise band of the exact one
    # (sd measured by the coordinator; benchmarks/evaluation_dp.py: bias ≈ -1 sd at ε_eval 1).
    noise = metrics["final"]["auc_noise_sd"]
    assert 0 < noise < 0.2 and abs(metrics["final"]["auc"] - exact["auc"]) <= 5 * noise
    assert [r["evaluated"] for r in metrics["rounds"]] == [False, False, True]
    assert len(metrics["banks"]) == 5
    for bank in metrics["banks"]:
        assert 0 < bank["epsilon"] <= 3.0
        assert 0 < bank["epsilon_eval"] <= metrics["config"]["eval-epsilon"]
        assert bank["eval_noise_multiplier"] > 0
        assert bank["rounds_joined"] == 3
        assert 0.5 < exact["banks"][bank["id"]]["personalized_auc"] <= 1.0
        assert 0 <= bank["personalized_auc"] <= 1.0
        assert bank["delta_below_1_over_n"] is True
    eps = [r["epsilon_max"] for r in metrics["rounds"]]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    assert (output / "model.safetensors").exists() and (output / "training.png").exists()


def test_the_dp_model_is_calibrated_out_of_the_box(dp_run):
    output, metrics = dp_run
    exact = exact_evaluation(output)["calibration"]  # the stored model on all held-out rows
    observed = exact["observed_default_rate"]
    # DP-SGD's clipping pulls PDs far below the default rate (about 1/3 of it here)...
    assert exact["mean_pd_uncalibrated"] < 0.6 * observed
    # ...and the map fitted on the noisy pooled histograms (eval-epsilon 1) brings them back.
    # Stated tolerance: a factor 4 either way, outside which under 0.5% of releases fall at
    # eval-epsilon 1 (refits of real histograms, benchmarks/calibration.py; 20% holds in
    # about half of them, so a tighter bound here would fail runs at random; the 20% target
    # is tested on the median of many releases in test_calibration.py).
    assert observed / 4 < exact["mean_pd"] < observed * 4
    # The stored map is the coordinator's fit on exactly what the banks released (their
    # ledgers hold each release): post-processing, nothing else of a bank used.
    grid = eval_grid(metrics["model"]["spec"]["prior_default_rate"],
                     metrics["config"]["eval-bins"], metrics["config"]["eval-logit-low"],
                     metrics["config"]["eval-logit-high"])
    released = sum(released_histograms(ledger) for ledger in (output / "banks").glob(
        "*/ledgers/*.jsonl"))
    noise_sd = sum(b["eval_noise_multiplier"] ** 2 for b in metrics["banks"]) ** 0.5
    refit = fit_histogram_calibration(*released, grid, "platt", noise_sd)
    stored = metrics["final"]["pd_calibration"]
    assert stored["slope"] == pytest.approx(refit.slope, rel=1e-6)
    assert stored["intercept"] == pytest.approx(refit.intercept, rel=1e-6, abs=1e-9)
    assert load_model(output / "model.safetensors")[1].calibration == refit
    facts = histogram_calibration_facts(*released, grid, refit)
    for key in ("mean_pd", "observed_default_rate", "calibration_slope"):
        assert metrics["final"][key] == pytest.approx(facts[key])


def released_histograms(ledger) -> np.ndarray:
    """The (defaults, others) histograms of the global model a bank's ledger says it sent."""
    for line in ledger.read_text().splitlines():
        body = json.loads(line)["body"]
        if body.get("message_kind") == "evaluate":
            return np.array(histograms_from(body["metrics"]), dtype=float)
    raise AssertionError(f"{ledger}: no evaluation release")


def test_every_bank_ledger_verifies_and_matches_the_reported_epsilon(dp_run):
    output, metrics = dp_run
    results = verify_path(output / "banks")
    assert len(results) == 5 and all(r.ok for r in results)
    by_bank = {r.bank_id: r for r in results}
    for bank in metrics["banks"]:
        assert by_bank[bank["id"]].last_epsilon == bank["epsilon"]


def test_coordinator_never_holds_an_individual_update_under_secure_aggregation(dp_run):
    output, metrics = dp_run
    bank_updates = set()
    for ledger in (output / "banks").glob("*/ledgers/*.jsonl"):
        for line in ledger.read_text().splitlines():
            body = json.loads(line)["body"]
            if body.get("event") == "update computed":
                bank_updates.add(body["update_sha256"])
    assert len(bank_updates) == 5 * 3
    for round_record in metrics["rounds"]:
        # every result the strategy saw carries the one aggregate, never a bank's update (without
        # SecAgg+ it carries each bank's: test_scale's 12-bank plain run shows this can fail)
        assert len(round_record["received_update_sha256"]) == 1
        assert not bank_updates & set(round_record["received_update_sha256"])


STEP_CAP = 4


def test_a_bank_out_of_budget_drops_mid_round_and_the_others_train_as_proposed(tmp_path):
    state = tmp_path / "state"
    tables = embedded_banks("lending_club")
    _, contract = load_embedded("lending_club")
    ledger = EgressLedger.for_bank(state / "west", "west", contract.fingerprint(tables["west"]))
    ledger.append("privacy_spend", {  # an earlier run already spent ε > 3 on this data
        "run_id": "earlier", "round": 1, "noise_multiplier": 0.5, "sample_rate": 0.04,
        "steps": 500, "delta": 1e-5, "accountant": "rdp", "epsilon": 40.0,
        "epsilon_lifetime": 40.0, "max_grad_norm": 1.0})
    metrics = simulate(tmp_path / "run", "--rounds", "1", "--privacy-budget-scope", "dataset",
                       "--personalization", "finetune", "--run-config",
                       f"bank-state-dir={state} max-steps-per-epoch={STEP_CAP}")
    for round_record in metrics["rounds"]:
        assert round_record["banks_trained"] == 4
        assert "bank west: refused: privacy-budget" in round_record["failures"]
    assert "west" not in {b["id"] for b in metrics["banks"] if "epsilon" in b}
    # the four other banks still train a useful model (exact AUC, offline)
    assert exact_evaluation(tmp_path / "run")["auc"] > 0.55
    refusals = [e.body["phase"] for e in ledger.entries() if e.kind == "refusal"]
    assert refusals == ["train", "personalize"]
    # The others ran the proposed step cap (below their ⌈n / 256⌉ = 6-7 steps): 4 steps an
    # epoch on Poisson batches at q = 1/4, in training and in fine-tuning.
    for bank in (b for b in metrics["banks"] if b["id"] != "west"):
        assert steps_per_epoch(bank["n_train"], 256) > STEP_CAP
        (path,) = (state / bank["id"]).glob("ledgers/*.jsonl")
        spends = [json.loads(line)["body"] for line in path.read_text().splitlines()
                  if '"privacy_spend"' in line]
        assert [(s["phase"], s["sample_rate"], s["steps"]) for s in spends] == [
            ("train", 1 / STEP_CAP, STEP_CAP), ("personalize", 1 / STEP_CAP, STEP_CAP)]


def test_bad_config_values_are_one_line_errors(tmp_path):
    result = run_cli("simulate", "--target-epsilon", "-1")  # as a user sees it
    assert result.returncode == 2, result.stderr
    assert "target-epsilon" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    output = {"output-dir": str(tmp_path / "run")}
    for overrides, dataset, needle in (({"num-server-rounds": 0}, "lending_club",
                                        "num-server-rounds"),
                                       ({}, "nope", "unknown dataset")):
        with pytest.raises(UserError, match=needle) as error:  # what the CLI prints, in process
            run_simulation(SimulationRequest(dataset, overrides=output | overrides))
        assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written
