"""Reference models on the very same splits as the federation, to make its gain visible.

- centralized non-private: one model on the union of all banks' train splits (what
  pooling data would give; not allowed in reality, an upper reference only);
- local-only DP: each bank alone, with the same DP budget and the same number of
  epochs as its federated training.
These are study artifacts of a simulation: they never leave the machine and are
not releases of any bank, so they are not charged to a bank's ledger.
"""

from __future__ import annotations

import numpy as np

from fedrisk.config import RunConfig
from fedrisk.models import ModelSpec, build_model
from fedrisk.models.metrics import discrimination_metrics
from fedrisk.privacy.accounting import plan_schedule
from fedrisk.privacy.dpsgd import TrainingSettings, predict_logits, train_locally

# X_train, y_train, X_test, y_test, train grades (None without a grade column)
Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


def _settings(config: RunConfig, epochs: int, private: bool) -> TrainingSettings:
    return TrainingSettings(epochs, config.batch_size, config.learning_rate_for(private),
                            config.momentum, config.max_grad_norm)


def centralized_auc(splits: dict[str, Split], spec: ModelSpec, config: RunConfig) -> float:
    """AUC on the pooled test splits of a non-private model trained on the pooled train splits."""
    x_train = np.concatenate([s[0] for s in splits.values()])
    y_train = np.concatenate([s[1] for s in splits.values()])
    x_test = np.concatenate([s[2] for s in splits.values()])
    y_test = np.concatenate([s[3] for s in splits.values()])
    grades = (np.concatenate([s[4] for s in splits.values()])
              if spec.n_grades else None)
    model = build_model(spec, config.seed)
    epochs = config.num_server_rounds * config.local_epochs
    train_locally(model, x_train, y_train, _settings(config, epochs, private=False), None,
                  config.seed, grades=grades)
    probabilities = 1 / (1 + np.exp(-predict_logits(model, x_test)))
    return discrimination_metrics(probabilities, y_test)["auc"]


def local_only_auc(split: Split, spec: ModelSpec, config: RunConfig) -> float:
    """Test AUC of a bank training alone, with DP at the run's budget unless ``dp`` is off."""
    x_train, y_train, x_test, y_test, grades = split
    epochs = config.num_server_rounds * config.local_epochs
    schedule = None
    if config.dp:
        schedule = plan_schedule(len(y_train), config.batch_size, epochs, 1,
                                 config.target_epsilon, config.target_delta,
                                 accountant=config.accountant)
    model = build_model(spec, config.seed)
    train_locally(model, x_train, y_train, _settings(config, epochs, private=config.dp),
                  schedule, config.seed, grades=grades if spec.n_grades else None)
    probabilities = 1 / (1 + np.exp(-predict_logits(model, x_test)))
    return discrimination_metrics(probabilities, y_test)["auc"]
