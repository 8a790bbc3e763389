"""A coordinator-crafted "global model" must not read one person out of the evaluation.

The coordinator (curious or compromised) knows one person's record. It crafts a model the
bank's policy allows (``hidden-units "80,1"``: two units per lending_club feature that sum
to |x_j - x*_j|, then one unit that is 1 only on the target row) whose logit is extreme
on the target row and low on every other row, and sends it to a bank in real evaluate
Messages through the real ClientApp. The count in the top bin of the bank's score
histograms then says whether the person is in the bank's held-out split, and which
histogram holds it says whether they defaulted.

Without DP (a labelled non-private baseline) the attack is exact. With DP evaluation each
message is one Gaussian release; over many runs (each run has its own evaluation budget,
a run's extra evaluations are refused) the best threshold test must satisfy
TPR ≤ e^ε·FPR + δ for ε of one release, checked with 95% Clopper-Pearson bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import EvaluateIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from fedrisk.audit.eval_attack import best_test, crafted_model, crafted_spec
from fedrisk.audit.mia import epsilon_lower_bound
from fedrisk.client.bank import bank_for_context
from fedrisk.client.bank_client import model_spec_for
from fedrisk.client.client_app import app
from fedrisk.config import RunConfig
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.models import model_arrays
from fedrisk.privacy.accounting import compose_epsilon

CRAFTED = "80,1"  # 2 units per feature (40 lending_club features), then the detector unit


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    embedded_banks("lending_club")["northeast"].to_csv(folder / "bank.csv", index=False)
    load_embedded("lending_club")[1].save(folder / "contract.toml")
    return folder


def context_for(folder, run_id: int, dp: bool) -> Context:
    """A bank with the simulation's default policy, in run ``run_id`` of the crafted model."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, 1, 0
    node_config = {"bank-id": "northeast", "data-path": str(folder / "bank.csv"),
                   "contract-path": str(folder / "contract.toml"),
                   "state-dir": str(folder / ("state-dp" if dp else "state-exact"))}
    config = RunConfig(dp=dp, hidden_units=CRAFTED, num_server_rounds=1,
                       personalization="none", output_dir=str(folder))
    return Context(run_id=run_id, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config=config.to_run_config())


def crafted_weights(context: Context, target: np.ndarray) -> list[np.ndarray]:
    """The coordinator's model for ``target``, in the run's agreed architecture."""
    bank = bank_for_context(context)
    spec = model_spec_for(bank, RunConfig.from_run_config(dict(context.run_config)))
    assert spec.hidden_units == crafted_spec(spec.n_features, 0.5).hidden_units
    return list(model_arrays(crafted_model(spec, target)).values())


def attack_once(folder, run_id: int, dp: bool, target: np.ndarray) -> tuple[int, int]:
    """One evaluate message of a fresh run; the reply's top-bin counts (defaulted, repaid)."""
    context = context_for(folder, run_id, dp)
    content = compat.evaluateins_to_recorddict(EvaluateIns(
        ndarrays_to_parameters(crafted_weights(context, target)), {"server-round": 1}), True)
    reply = app(Message(content=content, dst_node_id=1, message_type="evaluate", group_id="1"),
                context)
    assert not reply.has_error(), reply.error.reason
    metrics = reply.content.config_records["evaluateres.metrics"]
    top = max(int(key[-3:]) for key in metrics if key.startswith("hist_pos_"))
    return int(metrics[f"hist_pos_{top:03d}"]), int(metrics[f"hist_neg_{top:03d}"])


def targets(folder, dp: bool, trials: int) -> tuple[list, list, list]:
    """Targets in the held-out split (balanced labels), and training rows (not held out)."""
    bank = bank_for_context(context_for(folder, 0, dp))
    held_out, labels, train = bank.test_features, bank.test_labels, bank.train_features
    defaulted, repaid = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    inside = [defaulted[i % len(defaulted)] if i % 2 else repaid[i % len(repaid)]
              for i in range(trials)]
    outside = list(range(trials))
    # The crafted model must fire on exactly its target: no training row is also held out.
    assert all(np.abs(held_out - train[i]).sum(axis=1).min() > 1e-2 for i in outside)
    return [held_out[i] for i in inside], [labels[i] for i in inside], [train[i]
                                                                           for i in outside]


def run_attack(folder, dp: bool, trials: int) -> dict:
    inside, labels, outside = targets(folder, dp, trials)
    run_ids = iter(range(1, 2 * trials + 1))
    member = np.array([attack_once(folder, next(run_ids), dp, t) for t in inside], dtype=float)
    other = np.array([attack_once(folder, next(run_ids), dp, t) for t in outside], dtype=float)
    labels = np.array(labels)
    return {"member": member, "other": other, "labels": labels,
            "membership_score": (member.sum(axis=1), other.sum(axis=1)),
            "label_score": ((member[:, 0] - member[:, 1])[labels == 1],
                            (member[:, 0] - member[:, 1])[labels == 0])}


def test_exact_evaluation_reveals_membership_and_default(bank_dir):
    attack = run_attack(bank_dir, dp=False, trials=12)
    members, others = attack["membership_score"]
    assert (members == 1).all() and (others == 0).all()
    assert best_test(members, others) | {"threshold": 1.0} == {
        "tpr": 1.0, "fpr": 0.0, "advantage": 1.0, "threshold": 1.0}
    guessed_default = attack["member"][:, 0] > attack["member"][:, 1]
    assert (guessed_default == (attack["labels"] == 1)).all()


def test_dp_evaluation_bounds_the_crafted_model_attack(bank_dir):
    trials = 200
    attack = run_attack(bank_dir, dp=True, trials=trials)
    bank = bank_for_context(context_for(bank_dir, 0, True))
    config = RunConfig.from_run_config(dict(context_for(bank_dir, 0, True).run_config))
    releases = [e.body for e in bank.ledger.entries() if e.kind == "release_spend"
                and e.body["release"] == "evaluation"]
    assert len(releases) == 2 * trials  # one accounted release per evaluate message
    sigma = releases[-1]["noise_multiplier"]
    accountants = bank.policy.accountants_for(config)
    one_release = compose_epsilon([(sigma, 1.0, 1)], config.target_delta, accountants)
    # A label flip moves one count between the histograms: L2 sensitivity √2.
    label_flip = compose_epsilon([(sigma / np.sqrt(2), 1.0, 1)], config.target_delta,
                                 accountants)
    membership = epsilon_lower_bound(*attack["membership_score"], config.target_delta)
    label = epsilon_lower_bound(*attack["label_score"], config.target_delta)
    measured = best_test(*attack["membership_score"]) | {"epsilon_release": one_release}
    assert membership["epsilon_lb"] <= one_release, (membership, measured)
    assert label["epsilon_lb"] <= label_flip, label
    assert measured["advantage"] < 0.5, measured  # exact evaluation: advantage 1
    assert one_release <= config.eval_epsilon
