"""Time of a portfolio loss: 1,000,000 scenarios on a book of 10,000 loans.

The book is 10,000 lending_club loans (rows resampled with replacement, seeded), PDs
from a run's model, Basel II retail correlation, LGD 0.45. Reports, from one run of
this script: the wall and CPU time of `portfolio_loss` end to end (score the book,
simulate, write JSON/PNG/CSV) and of the simulation alone, candidate defaults drawn
and time per candidate, and the loss measures. Without --run, a run directory is made
here as in benchmarks/scoring.py. Writes benchmarks/results/portfolio.{json,png}.

    python benchmarks/portfolio.py [--loans 10000] [--scenarios 1000000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from scoring import applicants_table, make_run

from fedrisk.risk import portfolio_loss

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    """Run one portfolio loss, print a table and write results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loans", type=int, default=10_000)
    parser.add_argument("--scenarios", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run", type=Path, default=None, help="a finished run directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run_dir = args.run or make_run(Path(folder) / "run")
        book = Path(folder) / "book.csv"
        applicants_table(args.loans, seed=2).to_csv(book, index=False)
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        result = portfolio_loss(run_dir, book, scenarios=args.scenarios, workers=args.workers,
                                output_dir=Path(folder) / "out")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        RESULTS.mkdir(exist_ok=True)
        shutil.copy(result.histogram_path, RESULTS / "portfolio.png")
    candidates = result.simulation.candidate_defaults
    row = {
        "loans": result.n_loans, "scenarios": result.scenarios, "workers": args.workers,
        "cpus": os.cpu_count(), "load_average_1min_before": load,
        "end_to_end_seconds": wall, "end_to_end_cpu_seconds": cpu,
        "simulation_seconds": result.seconds, "candidate_defaults": candidates,
        "ns_per_candidate_wall": result.seconds / candidates * 1e9,
        "mean_pd": result.expected_loss_exact / (result.lgd * result.total_exposure),
        **{k: v for k, v in result.summary().items() if k not in ("top_contributors",)},
    }
    for key in ("end_to_end_seconds", "end_to_end_cpu_seconds", "simulation_seconds",
                "candidate_defaults", "ns_per_candidate_wall", "mean_pd", "expected_loss",
                "expected_loss_exact"):
        value = row[key]
        print(f"{key:<26} {value:>18,.3f}" if isinstance(value, float) else
              f"{key:<26} {value:>18,}")
    for kind in ("value_at_risk", "expected_shortfall"):
        for level, value in row[kind].items():
            print(f"{kind + ' ' + level:<26} {value:>18,.1f}")
    (RESULTS / "portfolio.json").write_text(json.dumps(row, indent=2))
    print(f"wrote {RESULTS / 'portfolio.json'} and {RESULTS / 'portfolio.png'}")


if __name__ == "__main__":
    main()
