"""DP-SGD on one large bank: where the default recipe's cost comes from when noise is small.

One bank of 48,000 training rows drawn like lending_club (``fedrisk data synthesize``,
its own seed, not the utility benchmark's draw), 20 epochs (the default run's epochs),
batch 256, δ = 1e-6, ε = 8: at this size the DP noise per step is small, so what separates
DP-SGD from non-private training is clipping, the step size and how many noisy steps an
epoch takes. Without a cap, 188 steps per epoch; with ``max-steps-per-epoch`` (16, and
the default 8) the bank takes that many steps on Poisson batches of 3,000 or 6,000 rows
instead. Trained with the banks' own ``train_locally``; exact AUC on the bank's
held-out 20%. With and without the grade head. Writes
benchmarks/results/dp_large_bank.{json,png}.

    python benchmarks/dp_large_bank.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from fedrisk.config import RunConfig  # noqa: E402
from fedrisk.data import Contract, read_table, stratified_split  # noqa: E402
from fedrisk.data.synthetic import synthesize_like  # noqa: E402
from fedrisk.models import ModelSpec, build_model  # noqa: E402
from fedrisk.privacy.accounting import plan_schedule  # noqa: E402
from fedrisk.privacy.dpsgd import TrainingSettings, predict_logits, train_locally  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ROWS, EPOCHS, BATCH, EPSILON, DELTA = 60_000, 20, 256, 8.0, 1e-6
# (clipping bound C, learning rate, DP steps per epoch at most; 0: no cap): without a cap,
# the default step and a smaller one three ways; then the default step under step caps
SETTINGS = ((1.0, 1.0, 0), (1.0, 0.3, 0), (0.1, 1.0, 0), (10.0, 0.1, 0), (1.0, 1.0, 16),
            (1.0, 1.0, 8))


def main() -> None:
    """Train every setting with and without the grade head; print and write the AUCs."""
    config = RunConfig()
    with tempfile.TemporaryDirectory() as folder:
        table = synthesize_like("lending_club", ROWS, folder, seed=7)
        data, contract = read_table(table.data_path), Contract.load(table.contract_path)
    train, test = stratified_split(data, contract, 0.2, 0)
    features, labels = contract.encode(train), contract.labels(train)
    test_features, test_labels = contract.encode(test), contract.labels(test)
    rows = []
    for grade_head in (True, False):
        spec = ModelSpec("mlp", contract.n_features, config.hidden_layers,
                         contract.prior_default_rate,
                         len(contract.grade_levels) if grade_head else 0)
        grades = contract.grades(train) if grade_head else None
        for clip, rate, cap in ((None, config.learning_rate_no_dp, 0), *SETTINGS):
            model = build_model(spec, config.seed)
            schedule = None if clip is None else plan_schedule(
                len(labels), BATCH, EPOCHS, 1, EPSILON, DELTA, max_steps_per_epoch=cap)
            settings = TrainingSettings(EPOCHS, BATCH, rate, config.momentum, clip or 1.0,
                                        max_steps_per_epoch=cap)
            train_locally(model, features, labels, settings, schedule, config.seed,
                          grades=grades)
            auc = float(roc_auc_score(test_labels, predict_logits(model, test_features)))
            rows.append({"grade_head": grade_head, "dp": clip is not None, "clip": clip,
                         "learning_rate": rate, "max_steps_per_epoch": cap, "auc": auc})
            print(f"grade head {grade_head!s:5}  "
                  + (f"DP ε={EPSILON:g} C={clip:<4g} lr={rate:<4g} cap={cap or 'none':<4}"
                     if clip else f"non-private      lr={rate:<4g}") + f"  AUC {auc:.4f}",
                  flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dp_large_bank.json").write_text(json.dumps(
        {"rows": ROWS, "n_train": len(labels), "epochs": EPOCHS, "batch_size": BATCH,
         "epsilon": EPSILON, "delta": DELTA, "results": rows}, indent=2))
    figure, axis = plt.subplots(figsize=(7, 4.5))
    labels_ = [("grade " if r["grade_head"] else "")
               + (f"C={r['clip']:g} lr={r['learning_rate']:g}"
                  + (f" cap {r['max_steps_per_epoch']}" if r["max_steps_per_epoch"] else "")
                  if r["dp"] else "non-private") for r in rows]
    axis.barh(labels_, [r["auc"] for r in rows])
    axis.set_xlim(0.5, 0.85)
    axis.set_xlabel(f"held-out AUC (one bank, {len(labels):,} rows, DP ε = {EPSILON:g})")
    figure.tight_layout()
    figure.savefig(RESULTS / "dp_large_bank.png", dpi=110)


if __name__ == "__main__":
    main()
