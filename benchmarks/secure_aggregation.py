"""Cost and accuracy of Flower SecAgg+ in fedrisk: with vs without, at 5 and 10 banks.

Runs the same non-private simulation (same seed, so training is identical) with
and without secure aggregation and reports, from one run of this script: mean round
time (rounds 2.., after Ray actors have started) and its ratio, and the consortium AUC
difference that SecAgg+ quantization causes. 5 banks = lending_club regions; 10 banks
= lending_club split by a seeded Dirichlet skew. Writes
benchmarks/results/secure_aggregation.{json,png}.

    python benchmarks/secure_aggregation.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedrisk.data import load_embedded  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def simulate(extra: list[str], rounds: int, secure: bool) -> dict:
    """One non-private `fedrisk simulate`; returns metrics.json."""
    with tempfile.TemporaryDirectory() as output:
        args = ["simulate", "--no-dp", "--rounds", str(rounds), "--output-dir", output, *extra,
                "--secure-aggregation" if secure else "--no-secure-aggregation"]
        subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], check=True, env=ENV,
                       capture_output=True)
        return json.loads((Path(output) / "metrics.json").read_text())


def measure(label: str, extra: list[str], rounds: int) -> dict:
    """Round times and AUC with and without SecAgg+ for one consortium."""
    row: dict = {"consortium": label}
    for secure in (False, True):
        metrics = simulate(extra, rounds, secure)
        seconds = [r["seconds"] for r in metrics["rounds"][1:]]
        key = "secagg" if secure else "plain"
        row[f"{key}_round_seconds"] = statistics.mean(seconds)
        row[f"{key}_auc"] = metrics["final"]["auc"]
    row["round_time_ratio"] = row["secagg_round_seconds"] / row["plain_round_seconds"]
    row["auc_difference"] = row["secagg_auc"] - row["plain_auc"]
    print(row, flush=True)
    return row


def main() -> None:
    """Measure both consortium sizes, print a table and write results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        table, contract = load_embedded("lending_club")
        table.to_csv(Path(folder) / "lending_club.csv", index=False)
        contract.save(Path(folder) / "contract.toml")
        ten = ["--data", str(Path(folder) / "lending_club.csv"), "--contract",
               str(Path(folder) / "contract.toml"), "--banks", "10"]
        rows = [measure("5 banks", [], args.rounds), measure("10 banks", ten, args.rounds)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "secure_aggregation.json").write_text(json.dumps(rows, indent=2))
    figure, axis = plt.subplots(figsize=(5, 3.2))
    labels = [r["consortium"] for r in rows]
    axis.bar([i - 0.2 for i in range(2)], [r["plain_round_seconds"] for r in rows], 0.4,
             label="plain FedAvg")
    axis.bar([i + 0.2 for i in range(2)], [r["secagg_round_seconds"] for r in rows], 0.4,
             label="SecAgg+")
    axis.set_xticks(range(2), labels)
    axis.set_ylabel("seconds per round")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "secure_aggregation.png", dpi=110)
    print("| consortium | plain s/round | SecAgg+ s/round | ratio | AUC plain | AUC SecAgg+ | Δ |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['consortium']} | {r['plain_round_seconds']:.2f} | "
              f"{r['secagg_round_seconds']:.2f} | {r['round_time_ratio']:.2f} | "
              f"{r['plain_auc']:.4f} | {r['secagg_auc']:.4f} | {r['auc_difference']:+.4f} |")


if __name__ == "__main__":
    main()
