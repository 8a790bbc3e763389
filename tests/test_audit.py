"""Privacy audit: ε lower-bound math, the DP implementation check and the report.

No Flower here: a tiny run directory (two credit_data banks, a FedAvg loop over the
real DP-SGD path, signed ledgers, metrics.json) is written in the run-dir layout.
"""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy.stats import binomtest

import fedrisk.privacy.clipping as clipping_module
import fedrisk.privacy.dpsgd as dpsgd_module
from fedrisk.audit import AuditSettings, build_audit, merge_bank_parts
from fedrisk.audit.bank import RunFacts, _verdict, bank_audit
from fedrisk.audit.canary import (
    _plan_check,
    check_accounting,
    check_clipping,
    check_noise,
    check_poisson,
    check_training_path,
)
from fedrisk.audit.canary_run import ShadowRun, white_box_audit
from fedrisk.audit.dp_spec import bank_dp_spec
from fedrisk.audit.eval_attack import measure_eval_attack
from fedrisk.audit.mia import clopper_pearson, epsilon_lower_bound
from fedrisk.audit.one_run import one_run_bound, p_value
from fedrisk.audit.render import render_html
from fedrisk.audit.report import SECTIONS
from fedrisk.audit.run import bank_inputs, load_metrics, run_facts
from fedrisk.audit.trainer import TrainPlan, bank_training_path
from fedrisk.data import embedded_banks, load_embedded, stratified_split
from fedrisk.models import ModelSpec, build_model, model_arrays, save_model, set_model_arrays
from fedrisk.models.histograms import FINE_GRID
from fedrisk.models.metrics import HISTOGRAM_BINS
from fedrisk.privacy.accounting import (
    DPSchedule,
    calibrate_noise_multiplier,
    compose_epsilon,
    plan_schedule,
    steps_per_epoch,
)
from fedrisk.privacy.chain import TrustedKeys
from fedrisk.privacy.keys import load_or_create_signing_key, public_key_pem
from fedrisk.privacy.ledger import EgressLedger
from fedrisk.privacy.release import Release, charge_release

SIGMA, CLIP = 1.2, 1.0
EVAL_SIGMA = 4.5  # one evaluation release at ε ≈ 0.9
CONFIG = {
    "dataset": "credit_data", "test-fraction": 0.2, "seed": 0, "model": "mlp",
    "hidden-units": "16", "num-server-rounds": 2, "local-epochs": 1, "batch-size": 64,
    "learning-rate": 0.5, "momentum": 0.9, "dp": True, "target-delta": 1e-5,
    "max-grad-norm": CLIP, "accountant": "rdp", "privacy-budget-scope": "run",
    "personalization": "none", "personalization-epochs": 1, "secure_aggregation": True,
}


def write_ledger(state_dir: Path, bank: str, fingerprint: str, run_id: str,
                 history: list[tuple[float, float, int]], reset: bool = False) -> tuple[str, float]:
    """Write spends like a bank does; ``reset`` mimics a fresh accountant every round."""
    ledger = EgressLedger.for_bank(state_dir, bank, fingerprint)
    for round_, step in enumerate(history, start=1):
        so_far = [step] if reset else history[:round_]
        epsilon = compose_epsilon(so_far, CONFIG["target-delta"], "rdp")
        ledger.append("privacy_spend", {
            "run_id": run_id, "round": round_, "phase": "train", "noise_multiplier": step[0],
            "sample_rate": step[1], "steps": step[2], "max_grad_norm": CLIP,
            "delta": CONFIG["target-delta"], "accountant": "rdp", "epsilon": epsilon,
            "epsilon_lifetime": epsilon})
    return ledger.head_hash, epsilon


def release_evaluation(state_dir: Path, bank: str, fingerprint: str) -> str:
    """Charge the final round's evaluation release like a bank does; return the ledger head."""
    ledger = EgressLedger.for_bank(state_dir, bank, fingerprint)
    charge_release(ledger, Release("42", CONFIG["num-server-rounds"], "evaluation", EVAL_SIGMA,
                                   CONFIG["target-delta"], "rdp"), budget=1.0)
    return ledger.head_hash


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Two credit_data banks of 220 rows (same σ meets the same target), 2 DP FedAvg rounds."""
    run = tmp_path_factory.mktemp("tiny_run")
    contract = load_embedded("credit_data")[1]
    tables = {b: t.iloc[:220] for b, t in list(embedded_banks("credit_data").items())[:2]}
    (run / "data").mkdir()
    contract.save(run / "data" / "contract.toml")
    for bank, table in tables.items():
        table.to_csv(run / "data" / f"{bank}.csv", index=False)
    (run / "data" / "banks.json").write_text(json.dumps({"contract": "contract.toml", "banks": [
        {"id": b, "file": f"{b}.csv", "rows": len(t)} for b, t in tables.items()]}))
    spec = ModelSpec("mlp", contract.n_features, (16,), contract.prior_default_rate)
    splits = {b: stratified_split(t, contract, 0.2, 0) for b, t in tables.items()}
    weights = list(model_arrays(build_model(spec, 0)).values())
    plan = TrainPlan(1, 64, 0.5, 0.9, CLIP)
    train = bank_training_path()
    for _ in range(CONFIG["num-server-rounds"]):
        updated, sizes = [], []
        for rows, _ in splits.values():
            model = build_model(spec, 0)
            set_model_arrays(model, weights)
            per_epoch = steps_per_epoch(len(rows), 64)
            train(model, contract.encode(rows), contract.labels(rows), plan,
                  DPSchedule(1 / per_epoch, per_epoch, SIGMA), 0)
            updated.append(list(model_arrays(model).values()))
            sizes.append(len(rows))
        weights = [sum(w[i] * n for w, n in zip(updated, sizes, strict=True)) / sum(sizes)
                   for i in range(len(weights))]
    model = build_model(spec, 0)
    set_model_arrays(model, weights)
    save_model(run / "model.safetensors", spec, model_arrays(model))
    banks = []
    for bank, (rows, test) in splits.items():
        per_epoch = steps_per_epoch(len(rows), 64)
        history = [(SIGMA, 1 / per_epoch, per_epoch)] * CONFIG["num-server-rounds"]
        head, epsilon = write_ledger(run / "banks" / bank, bank,
                                     contract.fingerprint(tables[bank]), "42", history)
        head = release_evaluation(run / "banks" / bank, bank, contract.fingerprint(tables[bank]))
        banks.append({"id": bank, "n_train": len(rows), "n_test": len(test), "epsilon": epsilon,
                      "ledger_head": head, "noise_multiplier": SIGMA})
    # the plan's target: what σ buys over the planned steps, so the plan check is exact
    config = {**CONFIG, "target-epsilon": max(b["epsilon"] for b in banks) + 0.01}
    (run / "metrics.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "42", "privacy": "DP-SGD (record-level)",
        "config": config, "model": {"file": "model.safetensors", "spec": spec.to_dict()},
        "banks": banks, "final": {}}))
    return run


@pytest.fixture(scope="module")
def audit(tiny_run, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("audit")
    document = build_audit(tiny_run, out, settings=AuditSettings(n_reference=2),
                           train_fn=bank_training_path())
    return document, out


# ----- ε lower bound ----------------------------------------------------------------


def test_clopper_pearson_matches_scipy_exact_interval():
    low, high = clopper_pearson(np.array([0, 7, 50]), 50, 0.05)
    for k, lo, hi in zip([0, 7, 50], low, high, strict=True):
        interval = binomtest(k, 50).proportion_ci(0.95, method="exact")
        assert lo == pytest.approx(interval.low, abs=1e-9)
        assert hi == pytest.approx(interval.high, abs=1e-9)


def test_perfect_separation_gives_a_large_bound():
    bound = epsilon_lower_bound(np.ones(1000), np.zeros(1000), delta=1e-5)
    # TPR_low = 0.025^(1/1000), FPR_high = 1 - 0.025^(1/1000): ln(0.9963/0.00368) = 5.6
    tpr_low, fpr_high = 0.025 ** 1e-3, 1 - 0.025 ** 1e-3
    assert bound["epsilon_lb"] == pytest.approx(math.log((tpr_low - 1e-5) / fpr_high), rel=1e-9)
    assert bound["epsilon_lb"] > 5


def test_random_scores_give_a_bound_near_zero():
    rng = np.random.default_rng(0)
    bound = epsilon_lower_bound(rng.normal(size=2000), rng.normal(size=2000), delta=1e-5)
    assert bound["epsilon_lb"] < 0.15


def test_bound_does_not_exceed_the_true_epsilon_of_a_dp_mechanism():
    # randomized response is exactly ε-DP: the audit may approach ε but must not exceed it
    epsilon, n = 1.0, 20000
    keep = math.exp(epsilon) / (1 + math.exp(epsilon))
    rng = np.random.default_rng(1)
    members = (rng.random(n) < keep).astype(float)
    nonmembers = (rng.random(n) >= keep).astype(float)
    bound = epsilon_lower_bound(members, nonmembers, delta=0.0)["epsilon_lb"]
    assert 0.85 < bound <= epsilon


# ----- implementation check -----------------------------------------------------------


def _failed(checks: list[dict]) -> set[str]:
    return {c["name"] for c in checks if not c["passed"]}


def test_implementation_check_passes_on_a_correct_dp_path():
    assert _failed(check_training_path(bank_training_path(), SIGMA, CLIP)) == set()


def test_catches_noise_multiplier_zero(monkeypatch):
    original = dpsgd_module.add_noise

    def no_noise(flat_grad, std, expected_batch_size, rng):
        original(flat_grad, 0.0, expected_batch_size, rng)

    monkeypatch.setattr(dpsgd_module, "add_noise", no_noise)
    assert not check_noise(bank_training_path(), SIGMA, CLIP)["passed"]


def test_catches_a_configured_noise_multiplier_of_zero():
    assert not check_noise(bank_training_path(), 0.0, CLIP)["passed"]


def test_catches_huge_max_grad_norm(monkeypatch):
    original = dpsgd_module.train_locally

    def no_clip(model, features, labels, settings, *args, **kwargs):
        return original(model, features, labels, replace(settings, max_grad_norm=1e9), *args,
                        **kwargs)

    monkeypatch.setattr(dpsgd_module, "train_locally", no_clip)
    assert not check_clipping(bank_training_path(), SIGMA, CLIP)["passed"]
    assert not check_noise(bank_training_path(), SIGMA, CLIP)["passed"]  # σ·1e9 is not σ·C


def test_catches_a_path_that_does_not_clip(monkeypatch):
    monkeypatch.setattr(clipping_module, "clip_factors", lambda norms, _: torch.ones_like(norms))
    assert not check_clipping(bank_training_path(), SIGMA, CLIP)["passed"]


def test_catches_fixed_size_batches(monkeypatch):
    def shuffled(n, sample_rate, rng):
        return torch.from_numpy(rng.permutation(n)[:round(n * sample_rate)])

    monkeypatch.setattr(dpsgd_module, "poisson_batch", shuffled)
    assert "poisson_sampling" in _failed(check_poisson(bank_training_path(), SIGMA, CLIP))


def test_catches_sampling_seeded_from_a_public_seed(monkeypatch):
    monkeypatch.setattr(dpsgd_module, "secret_generator", lambda: np.random.default_rng(0))
    assert _failed(check_poisson(bank_training_path(), SIGMA, CLIP)) == {"sampling_secret"}


def test_catches_an_accountant_reset_between_rounds(tmp_path):
    # every round's entry (and metrics.json) reports one round's ε: a fresh accountant per round
    history = [(SIGMA, 0.25, 4)] * 3
    head, epsilon = write_ledger(tmp_path, "bank-x", "ab" * 32, "7", history, reset=True)
    config = {**CONFIG, "num-server-rounds": 3, "batch-size": 64,
              "target-epsilon": compose_epsilon(history, 1e-5, "rdp")}
    spec = bank_dp_spec(tmp_path, "bank-x", "ab" * 32, "7", 256, config,
                        {"epsilon": epsilon, "ledger_head": head})
    assert {"accounting_cumulative", "accounting_reported"} <= _failed(
        check_accounting(spec, config, 256))
    assert spec["epsilon_rdp"] > epsilon * 1.2  # the ledger history shows the real spend
    assert spec["ledger"]["ok"] and spec["ledger"]["head_found"]


@pytest.mark.parametrize("ran_capped", [True, False])
def test_the_accounting_checks_hold_a_bank_to_the_runs_step_cap(tmp_path, ran_capped):
    # 4,000 rows at batch 64 under a cap of 4 steps per epoch: q = 1/4, 4 steps a round
    n, config = 4000, {**CONFIG, "num-server-rounds": 3, "max-steps-per-epoch": 4,
                       "target-epsilon": 3.0}
    planned = plan_schedule(n, 64, 1, 3, 3.0, 1e-5, max_steps_per_epoch=4 if ran_capped else 0)
    history = [(planned.noise_multiplier, planned.sample_rate, planned.steps_per_round)] * 3
    head, epsilon = write_ledger(tmp_path, "bank-x", "ab" * 32, "7", history)
    spec = bank_dp_spec(tmp_path, "bank-x", "ab" * 32, "7", n, config,
                        {"epsilon": epsilon, "ledger_head": head})
    failed = _failed(check_accounting(spec, config, n))
    # a bank that ignored the cap ran 63 steps a round at q = 1/63: not the proposed run
    assert failed == (set() if ran_capped else {"accounting_schedule",
                                                "noise_multiplier_planned"})


def test_pinned_keys_and_the_reported_head_gate_the_ledger(tmp_path):
    head, _ = write_ledger(tmp_path, "bank-x", "ab" * 32, "7", [(SIGMA, 0.25, 4)] * 2)
    args = (tmp_path, "bank-x", "ab" * 32, "7", 256, CONFIG, {"ledger_head": head})
    keys = tmp_path / "ledger-keys"
    keys.mkdir()
    registered = load_or_create_signing_key(tmp_path / "signing_key.pem")
    (keys / "bank-x.pem").write_text(public_key_pem(registered))
    spec = bank_dp_spec(*args, TrustedKeys.from_dir(keys))
    assert spec["ledger"]["ok"] and spec["ledger"]["pinned"] and len(spec["phases"]) == 2
    (keys / "bank-x.pem").write_text(public_key_pem(Ed25519PrivateKey.generate()))
    spec = bank_dp_spec(*args, TrustedKeys.from_dir(keys))
    assert not spec["ledger"]["ok"] and "trusted public key" in spec["ledger"]["error"]
    assert spec["phases"] == []  # no ε history is read from a ledger signed by another key
    spec = bank_dp_spec(*args[:-1], {"ledger_head": "0" * 64})  # both files rolled back
    assert not spec["ledger"]["ok"] and "lacks the head" in spec["ledger"]["error"]


# ----- the report ---------------------------------------------------------------------------


def test_audit_json_has_the_documented_keys(audit):
    document, out = audit
    on_disk = json.loads((out / "audit.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert on_disk["banks"] and set(on_disk) >= {"banks", "fairness", "implementation_check"}
    for bank in document["banks"]:
        assert {"epsilon", "mia_auc", "epsilon_lower_bound", "audit_passed"} <= set(bank)
        assert 0 < bank["epsilon"] <= bank["epsilon_rdp"] + 1e-9  # PRV headline ≤ RDP
        assert bank["audit_passed"] is True and bank["ledger_ok"] is True
        attack = bank["eval_attack"]
        assert bank["epsilon_eval"] == attack["epsilon_eval"] and 0 < bank["epsilon_eval"] < 1
        assert attack["passed"] is True and attack["trials"] == AuditSettings().eval_attack_trials
        assert attack["epsilon_lower_bound"] <= attack["epsilon_release"]
        assert 0 <= attack["fpr"] <= attack["tpr"] <= 1
        assert bank["canary_count"] == AuditSettings().canaries and bank["canary_passed"] is True
        assert bank["canary_claimed_epsilon"] == bank["epsilon_global_model"]
        assert 0 < bank["canary_epsilon_lower_bound"] <= bank["canary_claimed_epsilon"]
        assert bank["canary_correct"] <= bank["canary_guesses"]
        assert bank["canary_confidence"] == 0.95
        assert bank["canary_black_box_passed"] is True and bank["canary_black_box_count"] > 0
    assert document["implementation_check"]["passed"] is True
    assert document["canary_audit"]["passed"] is True
    assert document["fairness"]["views"].keys() >= {"Age (band)", "Marital"}


def test_html_is_self_contained_with_every_section(audit):
    _, out = audit
    html = (out / "audit.html").read_text()
    for key, title in SECTIONS:
        assert f'id="{key}"' in html and title.split(". ", 1)[1] in html
    assert html.count("data:image/png;base64,") == 6
    assert "http://" not in html and "https://" not in html


@pytest.fixture(scope="module")
def tiny_part(tiny_run) -> tuple[dict, object]:
    """One bank's part as it would leave the bank (loss attack only, to stay fast)."""
    metrics = load_metrics(tiny_run)
    facts, model = run_facts(tiny_run, metrics)
    bank = bank_inputs(tiny_run, metrics)[0]
    settings = AuditSettings(n_reference=0, implementation_check=False)
    return bank_audit(bank, model, facts, settings), bank


def test_bank_parts_hold_no_rows_and_merge_from_json(tiny_part):
    part, bank = tiny_part

    def list_lengths(value) -> set[int]:
        if isinstance(value, dict):
            return set().union(*(list_lengths(v) for v in value.values()))
        if isinstance(value, list):
            return {len(value)}.union(*(list_lengths(v) for v in value))
        return set()

    lengths = list_lengths(part)
    assert max(lengths) <= HISTOGRAM_BINS
    assert not lengths & {len(bank.table), part["n_train"], part["n_test"]}  # no per-row list
    incomes = {str(v) for v in bank.table["Income"].dropna().unique() if v > 1000}
    assert not any(income in json.dumps(part["explanations"]) for income in incomes)
    merged = merge_bank_parts([json.loads(json.dumps(part))], {"config": CONFIG})
    assert merged["banks"][0]["id"] == bank.bank_id
    assert merged["utility"]["n"] == part["n_test"]


def test_a_bound_above_the_claim_is_a_failed_audit_in_red(tiny_part):
    part = json.loads(json.dumps(tiny_part[0]))
    part["membership"]["global"]["epsilon_lower_bound"] = 2.0
    part["membership"]["global"]["attacks"]["loss"]["epsilon_lb"]["epsilon_lb"] = 2.0
    part["dp_spec"]["epsilon_global_model"] = 1.0
    part["verdict"] = _verdict(part, dp=True)
    document = merge_bank_parts([part], {"config": CONFIG})
    assert document["banks"][0]["audit_passed"] is False and document["audit_passed"] is False
    html = render_html(document)
    assert '<span class="fail">ε_LB &gt; ε: FAILED</span>' in html
    assert 'class="banner bad"' in html


def test_audit_report_pins_registered_keys_and_fails_a_ledger_signed_by_another(tiny_run,
                                                                                tmp_path):
    banks = [b["id"] for b in json.loads((tiny_run / "metrics.json").read_text())["banks"]]
    keys = tmp_path / "ledger-keys"
    keys.mkdir()
    own = load_or_create_signing_key(tiny_run / "banks" / banks[0] / "signing_key.pem")
    (keys / f"{banks[0]}.pem").write_text(public_key_pem(own))
    (keys / f"{banks[1]}.pem").write_text(public_key_pem(Ed25519PrivateKey.generate()))
    result = run_cli("audit", "report", str(tiny_run), "-o", str(tmp_path / "audit"),
                     "--references", "2", "--trusted-keys", str(keys))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ledger of {banks[1]}: FAILED" in result.stdout
    assert "trusted public key" in result.stdout and f"ledger of {banks[0]}" not in result.stdout
    document = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert document["ledgers_ok"] is False
    assert [b["ledger_ok"] for b in document["banks"]] == [True, False]


def test_a_dp_run_whose_evaluation_left_exact_fails_the_audit(tiny_part):
    part, bank = tiny_part
    part = json.loads(json.dumps(part))
    train, test = stratified_split(bank.table, bank.contract, 0.2, 0)
    part["eval_attack"] = measure_eval_attack(  # what the attack meets without noise
        bank.contract.encode(test), bank.contract.labels(test), bank.contract.encode(train),
        FINE_GRID, 0.0, CONFIG["target-delta"], trials=50)
    assert part["eval_attack"]["tpr"] == 1.0 and part["eval_attack"]["fpr"] == 0.0
    part["verdict"] = _verdict(part, dp=True)
    assert part["verdict"]["evaluation"]["passed"] is False
    document = merge_bank_parts([part], {"config": CONFIG})
    assert document["audit_passed"] is False
    assert 'class="banner bad"' in render_html(document)


# ----- one-run canary audit (Steinke, Nasr, Jagielski 2023) --------------------------------


def test_one_run_p_value_is_the_binomial_tail_without_delta():
    # ε-DP: correct guesses are no better than randomized response, Binomial(r, e^ε/(1+e^ε))
    assert p_value(1000, 100, 70, 1.0, 0.0) == pytest.approx(
        binomtest(70, 100, 1 / (1 + math.exp(-1.0)), alternative="greater").pvalue, rel=1e-9)
    assert p_value(1000, 100, 70, 1.0, 1e-5) > p_value(1000, 100, 70, 1.0, 0.0)


def test_one_run_bound_of_randomized_response_approaches_but_stays_below_its_epsilon():
    # randomized response on each canary's bit is exactly ε-DP per canary: the theorem is tight
    epsilon, m = 2.0, 20000
    rng = np.random.default_rng(0)
    included = rng.random(m) < 0.5
    keep = rng.random(m) < 1 / (1 + math.exp(-epsilon))
    scores = np.where(keep, included, ~included).astype(float) + rng.random(m) * 1e-3
    bound = one_run_bound(scores, included, delta=0.0)
    assert 0.8 * epsilon < bound["epsilon_lower_bound"] <= epsilon
    assert one_run_bound(rng.normal(size=m), included, delta=1e-5)["epsilon_lower_bound"] < 0.2


def _canary_part(tiny_run, claimed_epsilon=None, dp=True) -> dict:
    """One bank's part with only what the canary audit needs (no references, no impl. check)."""
    metrics = load_metrics(tiny_run)
    facts, model = run_facts(tiny_run, metrics)
    facts = RunFacts(facts.run_id, {**facts.config, "dp": dp}, facts.spec)
    settings = AuditSettings(n_reference=0, implementation_check=False, input_canaries=0,
                             eval_attack_trials=20, claimed_epsilon=claimed_epsilon)
    return bank_audit(bank_inputs(tiny_run, metrics)[0], model, facts, settings)


def _assert_failed_by_the_canary_audit_alone(part: dict, claim: float) -> None:
    verdict = part["verdict"]
    assert verdict["canary"]["claimed_epsilon"] == pytest.approx(claim)
    assert part["canary_audit"]["white_box"]["epsilon_lower_bound"] > max(claim, 3.0)
    assert verdict["canary"]["passed"] is False and verdict["audit_passed"] is False
    assert verdict["global"]["passed"] is True  # membership inference alone would pass it
    assert part["implementation_check"]["passed"] is None  # not run, or no DP to check
    document = merge_bank_parts([part], {"config": CONFIG})
    assert document["audit_passed"] is False and document["banks"][0]["canary_passed"] is False
    html = render_html(document)
    assert 'class="banner bad"' in html and "canary audit proves" in html


def test_a_run_claiming_its_epsilon_without_noise_is_failed_by_the_canary_audit(
        tiny_run, monkeypatch):
    original = dpsgd_module.add_noise

    def no_noise(flat_grad, std, expected_batch_size, rng):
        original(flat_grad, 0.0, expected_batch_size, rng)

    monkeypatch.setattr(dpsgd_module, "add_noise", no_noise)
    part = _canary_part(tiny_run)
    _assert_failed_by_the_canary_audit_alone(part, part["dp_spec"]["epsilon_global_model"])


def test_a_path_that_does_not_clip_is_failed_by_the_canary_audit(tiny_run, monkeypatch):
    monkeypatch.setattr(clipping_module, "clip_factors", lambda norms, _: torch.ones_like(norms))
    part = _canary_part(tiny_run)
    _assert_failed_by_the_canary_audit_alone(part, part["dp_spec"]["epsilon_global_model"])


def test_a_non_private_run_claimed_to_be_epsilon_3_is_failed_by_the_canary_audit(tiny_run):
    part = _canary_part(tiny_run, claimed_epsilon=3.0, dp=False)
    assert part["canary_audit"]["claim_source"] == "--claimed-epsilon"
    assert part["canary_audit"]["white_box"]["score"] == "sum of the canary's coordinate"
    _assert_failed_by_the_canary_audit_alone(part, 3.0)


def test_a_correct_mechanism_at_epsilon_3_gets_a_bound_between_1_and_its_claim(monkeypatch):
    """The default run's mechanism at the west bank: ≥ 1/3 tight, never above the claim."""
    draws = iter(range(1000))  # deterministic noise, sampling and canaries for the test only
    monkeypatch.setattr(dpsgd_module, "secret_generator",
                        lambda: np.random.default_rng(next(draws)))
    contract = load_embedded("lending_club")[1]
    train, _ = stratified_split(embedded_banks("lending_club")["west"], contract, 0.2, 0)
    features, labels, grades = (contract.encode(train), contract.labels(train),
                                contract.grades(train))
    plan = plan_schedule(len(labels), 256, 2, 5, 3.0, 1e-5, personalization_epochs=1)
    phases = (DPSchedule(plan.sample_rate, plan.steps_per_round, plan.noise_multiplier),) * 5
    spec = ModelSpec("mlp", contract.n_features, (64,), contract.prior_default_rate,
                     len(contract.grade_levels))
    shadow = ShadowRun(spec, 0, TrainPlan(2, 256, 1.0, 0.9, 1.0), phases, 5, 1e-5)
    claim = shadow.epsilon(len(labels))
    assert 2.5 < claim <= 3.0
    for _ in range(3):
        bound = white_box_audit(bank_training_path(), shadow, features, labels, grades,
                                rng=dpsgd_module.secret_generator())
        assert 1.0 <= bound["epsilon_lower_bound"] <= claim, bound
        assert bound["steps"] == 5 * plan.steps_per_round


def test_audit_report_fails_a_run_against_a_smaller_claimed_epsilon(tiny_run, tmp_path):
    bank = json.loads((tiny_run / "metrics.json").read_text())["banks"][0]["id"]
    result = run_cli("audit", "report", str(tiny_run), "-o", str(tmp_path / "audit"),
                     "--references", "0", "--input-canaries", "0", "--bank", bank,
                     "--claimed-epsilon", "0.05")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "canary FAILED" in result.stdout and " / 0.05" in result.stdout
    document = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert document["claimed_epsilon"] == 0.05 and document["audit_passed"] is False
    assert document["banks"][0]["canary_claimed_epsilon"] == 0.05
    assert run_cli("audit", "report", str(tiny_run), "--claimed-epsilon", "-1").returncode == 2


def test_a_resumed_runs_replanned_noise_passes_only_if_it_adds_noise_within_target():
    """A resumed run that repeats a charged round re-plans σ upward for the rounds left."""
    config = {"target-epsilon": 3.0, "target-delta": 1e-5, "batch-size": 256,
              "num-server-rounds": 4, "local-epochs": 2, "personalization": "none",
              "accountant": "rdp"}
    rate, per_round = 1 / 8, 16  # 2,000 train rows at batch 256: 8 steps per epoch
    planned = plan_schedule(2000, 256, 2, 4, 3.0, 1e-5).noise_multiplier
    replanned = calibrate_noise_multiplier(3.0, 1e-5, rate, 2 * per_round,
                                           [(planned, rate, 3 * per_round)])
    assert replanned > planned

    def phases(sigmas: list[float]) -> list[dict]:
        return [{"round": r, "phase": "train", "noise_multiplier": s, "sample_rate": rate,
                 "steps": per_round} for r, s in zip((1, 2, 3, 3, 4), sigmas, strict=True)]

    honest = phases([planned] * 3 + [replanned] * 2)
    assert _plan_check({"noise_multiplier": None}, honest, config, 2000)["passed"]
    cheating = phases([planned] * 3 + [planned] * 2)  # the repeated round not paid for
    assert not _plan_check({"noise_multiplier": planned}, cheating, config, 2000)["passed"]
