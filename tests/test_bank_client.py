"""A bank's DP round: write-ahead privacy spend, refusal at budget, no data in replies."""

import pytest
import torch

import fedrisk.client.bank_client as bank_client_module
from fedrisk.client.bank import BankSource, load_bank
from fedrisk.client.bank_client import BankClient
from fedrisk.config import RunConfig
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.models import build_model, set_model_arrays
from fedrisk.models.metrics import grade_metrics
from fedrisk.privacy.accounting import compose_epsilon
from fedrisk.privacy.policy import PolicyRefusal


@pytest.fixture
def bank(tmp_path):
    table = embedded_banks("lending_club")["northeast"]
    _, contract = load_embedded("lending_club")
    table.to_csv(tmp_path / "northeast.csv", index=False)
    contract.save(tmp_path / "contract.toml")
    source = BankSource("northeast", tmp_path / "northeast.csv", tmp_path / "contract.toml",
                        tmp_path / "state")
    config = RunConfig(num_server_rounds=2, target_epsilon=1.0, personalization="none",
                       output_dir=str(tmp_path))
    return load_bank(source, config), config


def test_a_bank_that_fails_after_training_is_still_charged(bank, monkeypatch):
    bank, config = bank
    client = BankClient(bank, config, run_id=7)
    real_train = bank_client_module.train_locally

    def train_then_crash(*args, **kwargs):
        real_train(*args, **kwargs)
        raise RuntimeError("process died after training, before replying")

    monkeypatch.setattr(bank_client_module, "train_locally", train_then_crash)
    with pytest.raises(RuntimeError, match="process died"):
        client.fit(client.get_parameters({}), {"server-round": 1})
    history = bank.ledger.privacy_history("7")
    assert len(history) == 1
    assert compose_epsilon(history, config.target_delta) > 0


def test_epsilon_grows_each_round_and_the_bank_refuses_past_its_budget(bank):
    bank, config = bank
    client = BankClient(bank, config, run_id=8)
    weights = client.get_parameters({})
    epsilons = []
    for server_round in (1, 2):
        _, n, metrics = client.fit(weights, {"server-round": server_round})
        epsilons.append(metrics["epsilon"])
        assert n == bank.n_train
    assert 0 < epsilons[0] < epsilons[1] <= config.target_epsilon
    with pytest.raises(PolicyRefusal, match="refused: privacy-budget"):
        client.fit(weights, {"server-round": 3})
    assert [e.kind for e in bank.ledger.entries()][-1] == "refusal"
    assert compose_epsilon(bank.ledger.privacy_history("8"), config.target_delta) <= (
        config.target_epsilon)


def test_fit_returns_only_the_update_and_scalars(bank):
    bank, config = bank
    client = BankClient(bank, config, run_id=9)
    weights = client.get_parameters({})
    update, _, metrics = client.fit(weights, {"server-round": 1})
    assert [u.shape for u in update] == [w.shape for w in weights]
    assert all(isinstance(v, int | float | bool) for k, v in metrics.items()
               if k not in ("bank_id", "ledger_head"))


def test_personalization_is_charged_to_the_same_budget_and_stays_at_the_bank(bank):
    bank, config = bank
    config = RunConfig(**{**config.__dict__, "personalization": "finetune"})
    client = BankClient(bank, config, run_id=10)
    weights = client.get_parameters({})
    for server_round in (1, 2):
        update, _, fit_metrics = client.fit(weights, {"server-round": server_round})
    _, _, metrics = client.evaluate(weights, {"server-round": 2, "personalize": True})
    assert fit_metrics["epsilon"] < metrics["epsilon"] <= config.target_epsilon
    # Only the personalized model's noisy, accounted histograms leave, never its AUC.
    assert "personalized_auc" not in metrics and "personalized_hist_pos_000" in metrics
    assert (bank.state_dir / "personalized" / "10.safetensors").exists()
    phases = [e.body["phase"] for e in bank.ledger.entries() if e.kind == "privacy_spend"]
    assert phases == ["train", "train", "personalize"]
    releases = [e.body["release"] for e in bank.ledger.entries() if e.kind == "release_spend"]
    assert releases == ["evaluation", "evaluation-grade", "evaluation-personalized"]


def test_the_grade_head_learns_the_risk_grade_with_dp(bank):
    bank, config = bank
    config = RunConfig(**{**config.__dict__, "target_epsilon": 8.0, "local_epochs": 4})
    client = BankClient(bank, config, run_id=11)
    weights = client.get_parameters({})
    assert client.spec.n_grades == 35  # lending_club sub_grade A1..G5
    untrained = grade_quality(client, weights)
    trained = weights
    for server_round in (1, 2):  # one bank alone, two DP rounds (ε = 8, 4 epochs each)
        update, _, fit_metrics = client.fit(trained, {"server-round": server_round})
        trained = [w + u for w, u in zip(trained, update, strict=True)]
    metrics = grade_quality(client, trained)  # measured at the bank, on its own rows
    assert fit_metrics["n_grades"] == 35
    assert metrics["grade_spearman"] > max(0.5, untrained["grade_spearman"] + 0.3)
    assert 0 <= metrics["grade_within_one"] <= 1
    assert any(key.startswith("grade_acc_") for key in metrics)


def grade_quality(client: BankClient, weights) -> dict:
    """The grade head's exact quality on the bank's held-out rows (never leaves the bank)."""
    model = build_model(client.spec)
    set_model_arrays(model, weights)
    with torch.no_grad():
        _, scores = model(torch.from_numpy(client.bank.test_features), with_grade=True)
    return grade_metrics(scores.numpy(), client.bank.test_grades, client.spec.n_grades)
