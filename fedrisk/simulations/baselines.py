"""Reference models on the very same splits as the federation, to make its gain visible.

- centralized non-private: models on the union of all banks' train splits, scored on
  the union of their test splits (what pooling data would give; not allowed in
  reality, an upper reference only): the fedrisk model of the run, a logistic
  regression and gradient-boosted trees (scikit-learn);
- local-only DP: each bank alone, with the same DP budget and the same number of
  epochs as its federated training;
- local-only non-private: each bank alone, a logistic regression without DP (what a
  bank can do on its own host with its own rows: the comparison a bank makes).
These are study artifacts of a simulation on public data: they never leave the
machine and are not releases of any bank, so they are not charged to a bank's
ledger, and none of them exists in a deployment.

The scikit-learn references are chosen without looking at any test split: their
hyperparameters are picked by stratified K-fold cross-validation on the train rows
alone (AUC), then refitted on all of them, with fixed seeds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from threadpoolctl import threadpool_limits

from fedrisk.config import RunConfig
from fedrisk.models import ModelSpec, build_model
from fedrisk.models.metrics import discrimination_metrics
from fedrisk.privacy.accounting import plan_schedule
from fedrisk.privacy.dpsgd import TrainingSettings, predict_logits, train_locally

# X_train, y_train, X_test, y_test, train grades (None without a grade column)
Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]

# Internal cross-validation of the scikit-learn references (train rows only).
CV_FOLDS = 5
# L2 strength of the logistic regression: 1/C from 0.001 to 100 (the contract encoding
# is standardized, so one grid fits every dataset).
LOGISTIC_GRID = {"C": list(np.logspace(-3, 2, 11))}
# Histogram GBDT: shrinkage 0.05, up to 500 trees stopped early on a stratified 10% of
# the rows it is given; CV picks the tree size and leaf regularization.
GBDT_GRID = {"max_leaf_nodes": [8, 31], "min_samples_leaf": [20, 80]}


def _settings(config: RunConfig, epochs: int, private: bool) -> TrainingSettings:
    return TrainingSettings(epochs, config.batch_size, config.learning_rate_for(private),
                            config.momentum, config.max_grad_norm,
                            max_steps_per_epoch=config.max_steps_per_epoch)


def pooled(splits: dict[str, Split]) -> Split:
    """The union of the banks' train splits and the union of their test splits."""
    grades = [s[4] for s in splits.values()]
    return (np.concatenate([s[0] for s in splits.values()]),
            np.concatenate([s[1] for s in splits.values()]),
            np.concatenate([s[2] for s in splits.values()]),
            np.concatenate([s[3] for s in splits.values()]),
            None if any(g is None for g in grades) else np.concatenate(grades))


def centralized_auc(splits: dict[str, Split], spec: ModelSpec, config: RunConfig) -> float:
    """Pooled test AUC of a non-private fedrisk model (``spec``) on the pooled train splits.

    It trains for as many epochs as a bank's whole federated training.
    """
    x_train, y_train, x_test, y_test, grades = pooled(splits)
    model = build_model(spec, config.seed)
    epochs = config.num_server_rounds * config.local_epochs
    train_locally(model, x_train, y_train, _settings(config, epochs, private=False), None,
                  config.seed, grades=grades if spec.n_grades else None)
    probabilities = 1 / (1 + np.exp(-predict_logits(model, x_test)))
    return discrimination_metrics(probabilities, y_test)["auc"]


def centralized_references(splits: dict[str, Split], spec: ModelSpec,
                           config: RunConfig) -> dict[str, float]:
    """The centralized non-private AUCs, as metrics.json's ``baselines`` keys.

    ``centralized_auc`` is the run's own model kind (``spec``, as before);
    ``centralized_mlp_auc`` the fedrisk MLP (the same number when the run's model is the
    MLP); ``centralized_logistic_auc`` and ``centralized_gbdt_auc`` the scikit-learn
    references; ``centralized_best_auc`` the largest of the last three.
    """
    run_model = centralized_auc(splits, spec, config)
    mlp = run_model if spec.kind == "mlp" else centralized_auc(splits, replace(spec, kind="mlp"),
                                                                config)
    logistic = centralized_logistic_auc(splits, config.seed)
    gbdt = centralized_gbdt_auc(splits, config.seed)
    return {"centralized_auc": run_model, "centralized_mlp_auc": mlp,
            "centralized_logistic_auc": logistic, "centralized_gbdt_auc": gbdt,
            "centralized_best_auc": float(np.nanmax([mlp, logistic, gbdt]))}


def centralized_logistic_auc(splits: dict[str, Split], seed: int) -> float:
    """Pooled test AUC of a non-private logistic regression on the pooled train splits."""
    return _sklearn_auc(_logistic(seed), LOGISTIC_GRID, pooled(splits), seed)


def centralized_gbdt_auc(splits: dict[str, Split], seed: int) -> float:
    """Pooled test AUC of non-private histogram gradient-boosted trees (pooled train)."""
    gbdt = HistGradientBoostingClassifier(learning_rate=0.05, max_iter=500, early_stopping=True,
                                          validation_fraction=0.1, n_iter_no_change=20,
                                          random_state=seed)
    return _sklearn_auc(gbdt, GBDT_GRID, pooled(splits), seed)


def local_only_nonprivate_auc(split: Split, seed: int) -> float:
    """Test AUC of a bank alone: a non-private logistic regression on its train split.

    What the bank can compute on its own host with its own rows; never a release.
    """
    return _sklearn_auc(_logistic(seed), LOGISTIC_GRID, split, seed)


def local_only_auc(split: Split, spec: ModelSpec, config: RunConfig) -> float:
    """Test AUC of a bank training alone, with DP at the run's budget unless ``dp`` is off."""
    x_train, y_train, x_test, y_test, grades = split
    epochs = config.num_server_rounds * config.local_epochs
    schedule = None
    if config.dp:
        schedule = plan_schedule(len(y_train), config.batch_size, epochs, 1,
                                 config.target_epsilon, config.target_delta,
                                 accountant=config.accountant,
                                 max_steps_per_epoch=config.max_steps_per_epoch)
    model = build_model(spec, config.seed)
    train_locally(model, x_train, y_train, _settings(config, epochs, private=config.dp),
                  schedule, config.seed, grades=grades if spec.n_grades else None)
    probabilities = 1 / (1 + np.exp(-predict_logits(model, x_test)))
    return discrimination_metrics(probabilities, y_test)["auc"]


def _logistic(seed: int) -> LogisticRegression:
    return LogisticRegression(max_iter=2000, random_state=seed)


def _sklearn_auc(model: ClassifierMixin, grid: dict[str, list], split: Split,
                 seed: int) -> float:
    """Test AUC of ``model`` with ``grid`` picked by CV on the train rows, refitted on them.

    NaN (as for every undefined AUC in metrics.json) when the train split has fewer than
    two rows of a class: no fold could hold both classes.
    """
    x_train, y_train, x_test, y_test, _ = split
    folds = min(CV_FOLDS, int(np.bincount(y_train.astype(int), minlength=2).min()))
    if folds < 2:
        return float("nan")
    search = GridSearchCV(model, grid, scoring="roc_auc",
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    # one thread: small tables, and OpenMP threads spin badly on a shared machine
    with threadpool_limits(limits=1):
        search.fit(x_train, y_train)
    return discrimination_metrics(search.predict_proba(x_test)[:, 1], y_test)["auc"]
