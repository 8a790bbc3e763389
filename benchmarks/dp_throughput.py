"""DP-SGD throughput against plain SGD: the banks' own ``train_locally``, one thread.

The issue's setting: 100,000 rows × 40 features (lending_club's encoding width), the
default model (MLP 64 with lending_club's 35-level grade head, trained jointly) and
the default batch size 256; also batch 1,024. Each repeat trains one epoch with DP-SGD
(Poisson batches, per-record clipping, noise) and one without (shuffled batches of the
same size, the same data and model), interleaved; the median over repeats is reported.
Samples/s counts the records each step really used. Targets: DP ≥ 250,000 samples/s
per core at batch 256 and DP time ≤ 1.5× non-private. Writes
benchmarks/results/dp_throughput.json.

    python benchmarks/dp_throughput.py [--quick] [--rows 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fedrisk.models import ModelSpec, build_model
from fedrisk.privacy.accounting import DPSchedule, steps_per_epoch
from fedrisk.privacy.dpsgd import TrainingSettings, train_locally

RESULTS = Path(__file__).parent / "results"
FEATURES, GRADES, HIDDEN = 40, 35, (64,)
TARGET_SAMPLES_PER_S, TARGET_RATIO = 250_000, 1.5


def synthetic_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardized features, ~5% defaults from a logistic score, grades 0..34."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, FEATURES), dtype=np.float32)
    score = features[:, :5].sum(axis=1) / 2 - 3.2
    labels = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(np.float32)
    grades = np.clip(np.round((score + 6) * 3) + rng.integers(-2, 3, n), 0, GRADES - 1)
    return features, labels, grades.astype(np.int64)


def one_epoch(rows: tuple[np.ndarray, ...], batch_size: int, private: bool) -> float:
    """Samples per second of one epoch of ``train_locally``."""
    features, labels, grades = rows
    model = build_model(ModelSpec("mlp", FEATURES, HIDDEN, 0.05, GRADES))
    per_epoch = steps_per_epoch(len(labels), batch_size)
    schedule = DPSchedule(1 / per_epoch, per_epoch, 1.0) if private else None
    seen = 0

    def count(_: torch.nn.Module, args: tuple) -> None:
        nonlocal seen
        seen += len(args[0])

    handle = model.register_forward_pre_hook(count)
    start = time.perf_counter()
    train_locally(model, features, labels, TrainingSettings(1, batch_size, 0.5, 0.9, 1.0),
                  schedule, seed=0, grades=grades)
    elapsed = time.perf_counter() - start
    handle.remove()
    return seen / elapsed


def measure(rows: tuple[np.ndarray, ...], batch_size: int, repeats: int) -> dict:
    """Median DP and non-private samples/s over interleaved repeats (after a warm-up)."""
    one_epoch(rows, batch_size, True)
    one_epoch(rows, batch_size, False)
    dp, plain = [], []
    for _ in range(repeats):
        dp.append(one_epoch(rows, batch_size, True))
        plain.append(one_epoch(rows, batch_size, False))
    dp_rate, plain_rate = statistics.median(dp), statistics.median(plain)
    return {"batch_size": batch_size, "dp_samples_per_s": dp_rate,
            "nondp_samples_per_s": plain_rate, "dp_time_ratio": plain_rate / dp_rate,
            "dp_runs": dp, "nondp_runs": plain}


def main() -> None:
    """Measure, print a table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 256 only, 3 repeats")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    rows = synthetic_rows(args.rows)
    batch_sizes = (256,) if args.quick else (256, 1024)
    repeats = 3 if args.quick else args.repeats
    load_before = os.getloadavg()[0]
    results = [measure(rows, size, repeats) for size in batch_sizes]
    default = results[0]
    document = {
        "dp_samples_per_s": default["dp_samples_per_s"],
        "nondp_samples_per_s": default["nondp_samples_per_s"],
        "dp_time_ratio": default["dp_time_ratio"],
        "targets": {"dp_samples_per_s": TARGET_SAMPLES_PER_S, "dp_time_ratio": TARGET_RATIO},
        "met": (default["dp_samples_per_s"] >= TARGET_SAMPLES_PER_S
                and default["dp_time_ratio"] <= TARGET_RATIO),
        "by_batch_size": results,
        "setup": {"rows": args.rows, "features": FEATURES, "hidden_units": list(HIDDEN),
                  "grade_levels": GRADES, "epochs_per_run": 1, "repeats": repeats,
                  "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "load_average_1min": [load_before, os.getloadavg()[0]]},
    }
    print(f"{'batch':>6} {'DP samples/s':>14} {'non-private':>14} {'DP time ratio':>14}")
    for row in results:
        print(f"{row['batch_size']:>6} {row['dp_samples_per_s']:>14,.0f} "
              f"{row['nondp_samples_per_s']:>14,.0f} {row['dp_time_ratio']:>14.2f}")
    print(f"targets (batch 256): DP ≥ {TARGET_SAMPLES_PER_S:,} samples/s, ratio ≤ "
          f"{TARGET_RATIO}: {'met' if document['met'] else 'NOT met'}")
    RESULTS.mkdir(exist_ok=True)
    name = "dp_throughput_quick.json" if args.quick else "dp_throughput.json"
    (RESULTS / name).write_text(json.dumps(document, indent=2))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
