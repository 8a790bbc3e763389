"""Evaluation under DP: the release mechanism, its accounting, what leaves, how it is read.

Real Opacus accountants, real banks (lending_club northeast), the real egress guard and
the coordinator's real run recorder; no mocks except the one failure injected to show
that a release is charged before it is drawn.
"""

import math

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Code, EvaluateIns, EvaluateRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity
from scipy.stats import chi2
from sklearn.metrics import roc_auc_score

import fedrisk.client.evaluation as evaluation_module
from fedrisk.audit.eval_attack import crafted_model, crafted_spec, measure_eval_attack
from fedrisk.client.bank import BankSource, bank_for_context, load_bank
from fedrisk.client.bank_client import BankClient
from fedrisk.client.evaluation import plan_evaluation
from fedrisk.client.guard import egress_guard_mod
from fedrisk.config import ConfigError, RunConfig
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.models.histograms import (
    eval_grid,
    histogram_auc,
    histogram_entries,
    histogram_metrics,
)
from fedrisk.privacy.accounting import PrivacyBudgetExceeded, compose_epsilon
from fedrisk.privacy.dpsgd import predict_logits
from fedrisk.privacy.policy import BankPolicy
from fedrisk.privacy.release import gaussian_release, release_history
from fedrisk.server.run_record import RunRecorder

EXACT_KEYS = {"n_test", "auc", "brier", "ks", "personalized_auc", "personalized_brier",
              "grade_spearman", "grade_accuracy", "grade_within_one"}


@pytest.fixture
def bank_files(tmp_path):
    embedded_banks("lending_club")["northeast"].to_csv(tmp_path / "bank.csv", index=False)
    load_embedded("lending_club")[1].save(tmp_path / "contract.toml")
    return tmp_path


def bank_with(folder, config: RunConfig, policy: BankPolicy | None = None):
    policy_path = None
    if policy is not None:
        policy_path = policy.save(folder / "bank-policy.toml")
    return load_bank(BankSource("northeast", folder / "bank.csv", folder / "contract.toml",
                                folder / "state", policy_path=policy_path), config)


def test_release_noise_has_the_calibrated_scale_and_comes_from_the_os():
    sigma, draws = 3.0, 4000
    noise = np.concatenate([gaussian_release(np.zeros(10), sigma) for _ in range(draws // 10)])
    # Rounding adds variance 1/12; the sample variance must sit in its 99.9% chi-square band.
    expected = sigma ** 2 + 1 / 12
    low, high = chi2.ppf([0.0005, 0.9995], draws - 1) / (draws - 1) * expected
    assert low <= noise.var(ddof=1) <= high
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(draws)
    counts = np.arange(10) * 7
    assert not np.array_equal(gaussian_release(counts, sigma), gaussian_release(counts, sigma))
    assert gaussian_release(counts, sigma).dtype == np.int64


def test_a_run_releases_exactly_its_plan_and_the_ledger_composes_it(bank_files):
    config = RunConfig(num_server_rounds=2, eval_every=1, personalization="finetune",
                       output_dir=str(bank_files))
    bank = bank_with(bank_files, config, BankPolicy.simulation_default())
    client = BankClient(bank, config, run_id=21)
    plan = plan_evaluation(bank, config)
    assert plan.rounds == (1, 2) and plan.releases == 4  # 2 rounds + personalized + grades
    weights = client.get_parameters({})
    for server_round in (1, 2):
        client.fit(weights, {"server-round": server_round})
        _, _, metrics = client.evaluate(weights, {"server-round": server_round,
                                                  "personalize": server_round == 2})
    spends = [e.body for e in bank.ledger.entries() if e.kind == "release_spend"]
    assert [s["release"] for s in spends] == ["evaluation", "evaluation", "evaluation-grade",
                                              "evaluation-personalized"]
    accountants = bank.policy.accountants_for(config)
    for count, spend in enumerate(spends, start=1):
        assert spend["epsilon_eval"] == compose_epsilon(
            [(plan.noise_multiplier, 1.0, 1)] * count, config.target_delta, accountants)
    assert config.eval_epsilon - 0.01 <= metrics["epsilon_eval"] <= config.eval_epsilon
    assert metrics["epsilon_eval"] == spends[-1]["epsilon_eval"]
    assert release_history(bank.ledger, "21") == plan.history
    # A coordinator asking for one more evaluation gets a refusal, not a release.
    with pytest.raises(PrivacyBudgetExceeded, match="budget exhausted"):
        client.evaluate(weights, {"server-round": 2})
    assert bank.ledger.entries()[-1].kind == "refusal"
    assert len(release_history(bank.ledger, "21")) == plan.releases


def test_a_release_is_charged_before_it_is_drawn(bank_files, monkeypatch):
    config = RunConfig(num_server_rounds=1, personalization="none",
                       output_dir=str(bank_files))
    bank = bank_with(bank_files, config)
    client = BankClient(bank, config, run_id=22)

    def crash(*args, **kwargs):
        raise RuntimeError("the bank died while drawing the noise")

    monkeypatch.setattr(evaluation_module, "gaussian_release", crash)
    with pytest.raises(RuntimeError, match="died"):
        client.evaluate(client.get_parameters({}), {"server-round": 1})
    spends = [e for e in bank.ledger.entries() if e.kind == "release_spend"]
    assert len(spends) == 1 and spends[0].body["release"] == "evaluation"
    assert compose_epsilon(release_history(bank.ledger, "22"), config.target_delta) > 0


def test_only_noisy_counts_and_their_epsilon_leave_under_dp(bank_files):
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 23, 1, 0
    config = RunConfig(num_server_rounds=1, personalization="finetune",
                       output_dir=str(bank_files))
    policy = BankPolicy(**{**BankPolicy.simulation_default().__dict__, "size_disclosure": "dp"})
    policy.save(bank_files / "bank-policy.toml")
    node_config = {"bank-id": "northeast", "data-path": str(bank_files / "bank.csv"),
                   "contract-path": str(bank_files / "contract.toml"),
                   "state-dir": str(bank_files / "state"),
                   "policy-path": str(bank_files / "bank-policy.toml")}
    context = Context(run_id=23, node_id=1, node_config=node_config, state=RecordDict(),
                      run_config=config.to_run_config())
    bank = bank_for_context(context)
    client = BankClient(bank, config, 23)
    content = compat.evaluateins_to_recorddict(EvaluateIns(ndarrays_to_parameters(
        client.get_parameters({})), {"server-round": 1, "personalize": True}), True)
    app = ClientApp(client_fn=lambda ctx: BankClient(bank, config, ctx.run_id).to_client(),
                    mods=[egress_guard_mod])
    reply = app(Message(content=content, dst_node_id=1, message_type="evaluate", group_id="1"),
                context)
    assert not reply.has_error(), reply.error.reason  # the guard lets it pass
    metrics = dict(reply.content.config_records["evaluateres.metrics"])
    assert not EXACT_KEYS & set(metrics)
    bins = config.eval_bins
    counts = {k for k in metrics if "hist_" in k or k.startswith("grade_error_")}
    assert len(counts) == 4 * bins + 7  # global and personalized pairs, grade errors
    assert all(isinstance(metrics[k], int) for k in counts)
    assert set(metrics) - counts == {"bank_id", "epsilon", "epsilon_lifetime", "epsilon_eval",
                                     "epsilon_eval_lifetime", "eval_noise_multiplier",
                                     "ledger_id", "ledger_entries", "ledger_head"}
    # num_examples is the noisy count, not the held-out size
    total = sum(metrics[f"hist_{c}_{i:03d}"] for c in ("pos", "neg") for i in range(bins))
    assert reply.content.metric_records["evaluateres.num_examples"]["num_examples"] == total


def test_the_coordinator_reads_every_figure_off_the_noisy_histograms():
    config = RunConfig(num_server_rounds=2)
    recorder = RunRecorder(config, 1, {})
    recorder.prior_default_rate = 0.05
    grid = eval_grid(0.05, config.eval_bins, config.eval_logit_low, config.eval_logit_high)
    rng = np.random.default_rng(0)
    exact, released, results = [], [], []
    for bank in range(3):
        labels = (rng.random(400) < 0.1).astype(float)
        logits = rng.normal(-3.5 + 1.5 * labels, 1.0)
        exact.append((logits, labels))
        noisy = tuple(gaussian_release(c, 2.0) for c in grid.histograms(logits, labels))
        released.append(noisy)
        errors = {f"grade_error_{i:03d}": c for i, c in enumerate([3, -2, 40, 300, 50, 0, 7])}
        metrics = {"bank_id": f"bank-{bank}", "epsilon_eval": 0.9, "eval_noise_multiplier": 2.0,
                   **histogram_entries(*noisy), **histogram_entries(*noisy, "personalized_hist"),
                   **errors}
        results.append((None, EvaluateRes(Status(Code.OK, ""), 0.0, 0, metrics)))
    recorder.on_evaluate(1, [], [])  # a round that was not evaluated
    recorder.on_evaluate(2, results, [])
    skipped, evaluated = recorder.rounds
    assert skipped["auc"] is None and skipped["evaluated"] is False
    pooled = [sum(r[i] for r in released) for i in (0, 1)]
    assert evaluated["auc"] == histogram_auc(*pooled)
    truth = roc_auc_score(np.concatenate([y for _, y in exact]),
                          np.concatenate([z for z, _ in exact]))
    assert abs(evaluated["auc"] - truth) <= 4 * evaluated["auc_noise_sd"] + 0.02
    assert evaluated["auc_noise_sd"] > 0 and evaluated["personalized_auc"] == evaluated["auc"]
    bank = recorder.banks["bank-0"]
    assert bank["auc"] == histogram_metrics(*released[0], grid)["auc"]
    assert bank["n_test"] == max(0, int(released[0][0].sum() + released[0][1].sum()))
    assert bank["grade_accuracy"] == pytest.approx(300 / 400)
    assert bank["grade_within_one"] == pytest.approx(390 / 400)
    assert bank["grade_spearman"] is None and bank["grade_accuracy_by_level"] is None
    document = recorder.metrics(crafted_spec(4, 0.05))
    assert document["final"]["auc"] == evaluated["auc"]


def test_the_crafted_model_fires_on_its_target_only_and_dp_bounds_the_attack(bank_files):
    config = RunConfig(output_dir=str(bank_files))
    bank = bank_with(bank_files, config)
    spec = crafted_spec(bank.contract.n_features, bank.contract.prior_default_rate)
    target = bank.test_features[3]
    logits = predict_logits(crafted_model(spec, target), bank.test_features)
    assert (logits > 19).sum() == 1 and logits[3] > 19 and (np.delete(logits, 3) < -19).all()
    grid = eval_grid(bank.contract.prior_default_rate, config.eval_bins,
                     config.eval_logit_low, config.eval_logit_high)
    exact = measure_eval_attack(bank.test_features, bank.test_labels, bank.train_features,
                                grid, 0.0, 1e-5, trials=40)
    assert exact["tpr"] == 1.0 and exact["fpr"] == 0.0 and exact["passed"] is None
    sigma = plan_evaluation(bank, config).noise_multiplier
    private = measure_eval_attack(bank.test_features, bank.test_labels, bank.train_features,
                                  grid, sigma, 1e-5, trials=300)
    assert private["passed"] is True
    assert private["epsilon_release"] < config.eval_epsilon


def test_the_evaluation_schedule_and_grid_are_validated_run_config():
    assert RunConfig(num_server_rounds=5).evaluation_rounds == (5,)
    assert RunConfig(num_server_rounds=5, eval_every=2).evaluation_rounds == (2, 4, 5)
    assert RunConfig(num_server_rounds=3, dp=False).evaluation_rounds == (1, 2, 3)
    for key, value in (("eval-bins", 1), ("eval-bins", 257), ("eval-every", -1),
                       ("eval-logit-low", 3.0)):
        with pytest.raises(ConfigError, match=f"'{key}'"):
            RunConfig.from_run_config({key: value})
