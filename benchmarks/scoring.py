"""Throughput of applicant scoring (applicants per second), without and with reasons.

Scores a table of lending_club applicants (rows resampled with replacement, seeded)
with a run's model, and reports from one run of this script:

- end to end: `score_applicants` from CSV to CSV (read, check, encode, score, write);
- its stages on the table in memory: row checks (incl. `check_table`), the vectorized
  encoding (`Contract.encode`), the model in batches of 65,536,
  and `score_rows` (encode + model + PD, band, expected loss);
- with reasons (DeepLift, three reasons per applicant), end to end on a smaller table.

Without --run, a run directory is made here: the lending_club contract and an MLP
(64 hidden units) trained centrally for a few seconds; throughput does not depend on
the weights. Writes benchmarks/results/scoring.{json,png}.

    python benchmarks/scoring.py [--rows 200000] [--reason-rows 20000] [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from fedrisk.data import load_embedded, read_table  # noqa: E402
from fedrisk.models import ModelSpec, build_model, model_arrays, save_model  # noqa: E402
from fedrisk.risk import load_run, score_applicants  # noqa: E402
from fedrisk.risk.rows import check_rows  # noqa: E402
from fedrisk.risk.scoring import score_rows  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def make_run(directory: Path, dataset: str = "lending_club", seed: int = 0) -> Path:
    """A run directory like `fedrisk simulate` writes, with a centrally trained MLP."""
    table, contract = load_embedded(dataset)
    features = torch.from_numpy(contract.encode(table))
    labels = torch.from_numpy(contract.labels(table))
    spec = ModelSpec("mlp", contract.n_features, (64,), contract.prior_default_rate)
    model = build_model(spec, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small steps: more threads only contend on a busy machine
    try:
        for _ in range(200):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(features), labels)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    save_model(directory / "model.safetensors", spec, model_arrays(model))
    (directory / "data").mkdir(parents=True, exist_ok=True)
    contract.save(directory / "data" / "contract.toml")
    table.to_csv(directory / "data" / f"{dataset}.csv", index=False)
    config = {"seed": seed, "test-fraction": 0.2, "dataset": dataset}
    (directory / "metrics.json").write_text(json.dumps({"config": config}))
    return directory


def applicants_table(rows: int, seed: int = 0, dataset: str = "lending_club") -> pd.DataFrame:
    """``rows`` applicants resampled from an embedded dataset, target dropped, ids added."""
    table, contract = load_embedded(dataset)
    picked = np.random.default_rng(seed).integers(0, len(table), rows)
    applicants = table.iloc[picked].drop(columns=[contract.target]).reset_index(drop=True)
    applicants.insert(0, "applicant_id", np.arange(rows))
    return applicants


def timed(function: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of one call, and its result."""
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def measure(run_dir: Path, folder: Path, rows: int, reason_rows: int) -> list[dict]:
    """Time every stage; one row per measurement with applicants per second."""
    applicants = folder / "applicants.csv"
    applicants_table(rows).to_csv(applicants, index=False)
    few = folder / "few.csv"
    applicants_table(reason_rows, seed=1).to_csv(few, index=False)
    run = load_run(run_dir)
    table = read_table(applicants)
    seconds, checked = timed(lambda: check_rows(table, run.contract, "bench",
                                                need_exposure=True))
    valid = checked.valid
    stages = [("check rows (incl. check_table)", rows, seconds)]
    features = run.contract.encode(valid)
    stages += [
        ("encode, Contract.encode", rows, timed(lambda: run.contract.encode(valid))[0]),
        ("model logits (batches of 65,536)", rows, timed(lambda: run.logits(features))[0]),
        ("score_rows, no reasons", rows, timed(lambda: _score(run, valid, 0))[0]),
        ("score_applicants CSV->CSV, no reasons", rows, timed(lambda: score_applicants(
            run_dir, applicants, folder / "scores.csv", with_reasons=False))[0]),
        ("score_rows, 3 reasons", reason_rows, timed(lambda: _score(
            run, check_rows(read_table(few), run.contract, "few", need_exposure=True).valid,
            3))[0]),
        ("score_applicants CSV->CSV, 3 reasons", reason_rows, timed(lambda: score_applicants(
            run_dir, few, folder / "few_scores.csv"))[0]),
    ]
    return [{"stage": name, "rows": n, "seconds": s, "applicants_per_second": n / s}
            for name, n, s in stages]


def _score(run, rows: pd.DataFrame, n_reasons: int) -> pd.DataFrame:
    return score_rows(run, rows, calibrator=None, lgd=0.45, n_reasons=n_reasons,
                      id_column="applicant_id", batch_size=65_536)


def main() -> None:
    """Measure, print a table and write results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--reason-rows", type=int, default=20_000)
    parser.add_argument("--run", type=Path, default=None, help="a finished run directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run_dir = args.run or make_run(Path(folder) / "run")
        results = measure(run_dir, Path(folder), args.rows, args.reason_rows)
    print(f"{'stage':<40} {'rows':>9} {'seconds':>8} {'applicants/s':>13}")
    for row in results:
        print(f"{row['stage']:<40} {row['rows']:>9,} {row['seconds']:>8.3f} "
              f"{row['applicants_per_second']:>13,.0f}")
    machine = {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
               "torch_threads": torch.get_num_threads(),
               "python": platform.python_version(), "torch": torch.__version__}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scoring.json").write_text(json.dumps(
        {"machine": machine, "run": str(args.run or "trained here"), "results": results},
        indent=2))
    figure, axis = plt.subplots(figsize=(7, 3.6))
    axis.barh([r["stage"] for r in results][::-1],
              [r["applicants_per_second"] for r in results][::-1], color="#4c72b0")
    axis.axvline(100_000, color="#c00000", linestyle="--", label="target 100,000/s")
    axis.set_xscale("log")
    axis.set_xlabel("applicants per second (log scale)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(RESULTS / "scoring.png", dpi=120)
    print(f"wrote {RESULTS / 'scoring.json'} and {RESULTS / 'scoring.png'}")


if __name__ == "__main__":
    main()
