"""One poisoning bank of five: what it does to the consortium AUC, and what bounds it.

lending_club, 5 census-region banks; the largest (``west``) sends ``factor`` × its
honest update in every round from round 1 (``benchmarks/poisoning_bank.py``). Training
is non-private (``--no-dp``), so with the same seed every run trains the honest banks
identically and the columns differ only by the aggregation. Rows: honest, scale ×10,
×1000, sign flip ×−1, ×−10. Columns: SecAgg+ FedAvg (the default: each value a bank
sends is clipped to ± secagg-clipping-range = 8), the same with a clipping range of 2;
without SecAgg+: FedAvg, FedMedian and FedTrimmedAvg (trimmed-fraction 0.2: one bank cut
at each end), each with the default bound of every update to 2× the round's median
update norm (update-norm-bound), and FedAvg without that bound. The figure is the exact
consortium AUC of the final global model on all banks' held-out rows
(:func:`fedrisk.simulations.exact.exact_evaluation`). Each run is a separate process (a
fresh Ray). Writes benchmarks/results/poisoning.{json,png}.

    python benchmarks/poisoning.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ATTACKER = "west"  # the largest bank (2,446 rows)
ATTACKS = {"honest": 1.0, "scale x10": 10.0, "scale x1000": 1000.0, "sign flip x-1": -1.0,
           "sign flip x-10": -10.0}
PLAIN = {"secure-aggregation": False}
COLUMNS = {  # run-config overrides of each aggregation
    "SecAgg+ FedAvg": {},
    "SecAgg+ FedAvg, clip 2": {"secagg-clipping-range": 2.0},
    "plain FedAvg": PLAIN,
    "plain FedAvg, no norm bound": {**PLAIN, "update-norm-bound": 0.0},
    "plain FedMedian": {**PLAIN, "strategy": "fedmedian"},
    "plain FedTrimmedAvg": {**PLAIN, "strategy": "fedtrimmedavg"},
}


def run_one(factor: float, column: str, rounds: int, output: Path) -> dict:
    """One simulation with ``ATTACKER`` poisoning by ``factor``; returns its exact AUC and time."""
    from poisoning_bank import poisoning_bank_app  # on PYTHONPATH: Ray's workers import it

    from fedrisk.simulations.exact import exact_evaluation
    from fedrisk.simulations.runner import SimulationRequest, simulate

    overrides = {"dp": False, "num-server-rounds": rounds, "personalization": "none",
                 "output-dir": str(output), **COLUMNS[column]}
    start = time.monotonic()
    metrics = simulate(SimulationRequest(
        dataset="lending_club", overrides=overrides,
        bank_app=None if factor == 1.0 else poisoning_bank_app(ATTACKER, factor)))
    seconds = time.monotonic() - start
    exact = exact_evaluation(output)
    return {"auc": exact["auc"], "seconds": seconds,
            "banks_trained_last_round": metrics["rounds"][-1].get("banks_trained"),
            "clipping_range": (metrics.get("secagg") or {}).get("clipping_range")}


def main() -> None:
    """Run every attack × aggregation, print the table, write json and png."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("FACTOR", "COLUMN"), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(float(args.one[0]), args.one[1], args.rounds, args.output)))
        return
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           # fedrisk and this folder (poisoning_bank), for the run and its Ray workers
           "PYTHONPATH": os.pathsep.join(str(Path(__file__).resolve().parents[i]) for i in (1, 0))}
    table: dict[str, dict[str, dict]] = {}
    started = time.monotonic()
    for attack, factor in ATTACKS.items():
        table[attack] = {}
        for column in COLUMNS:
            with tempfile.TemporaryDirectory(prefix="poisoning-") as output:
                done = subprocess.run(
                    [sys.executable, __file__, "--rounds", str(args.rounds), "--output",
                     output, "--one", str(factor), column],
                    check=True, env=env, capture_output=True, text=True)
            table[attack][column] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{attack:15s} {column:20s} AUC {table[attack][column]['auc']:.3f} "
                  f"({table[attack][column]['seconds']:.0f} s)", flush=True)
    wall = time.monotonic() - started
    print_table(table)
    print(f"wall time: {wall:.0f} s for {len(ATTACKS) * len(COLUMNS)} runs")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "poisoning.json").write_text(json.dumps({
        "dataset": "lending_club", "banks": 5, "attacker": ATTACKER, "rounds": args.rounds,
        "dp": False, "columns": COLUMNS, "wall_seconds": wall, "auc": table}, indent=2))
    plot(table)


def print_table(table: dict[str, dict[str, dict]]) -> None:
    """Markdown table of exact consortium AUCs."""
    print("| attack (bank west) | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for attack, row in table.items():
        print(f"| {attack} | " + " | ".join(f"{row[c]['auc']:.3f}" for c in COLUMNS) + " |")


def plot(table: dict[str, dict[str, dict]]) -> None:
    """Grouped bars: AUC per attack, one bar per aggregation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(COLUMNS)
    for i, column in enumerate(COLUMNS):
        ax.bar([j + i * width for j in range(len(table))],
               [row[column]["auc"] for row in table.values()], width, label=column)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(table))], list(table))
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylim(0.2, 0.85)
    ax.set_ylabel("exact consortium AUC")
    ax.set_title("One of 5 banks poisoning its update (lending_club, no DP)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "poisoning.png", dpi=120)


if __name__ == "__main__":
    main()
