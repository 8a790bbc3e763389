"""Wall time of a deployed consortium vs the same job in simulation (3 banks, 2 rounds).

The job: lending_club's northeast, midwest and south_atlantic banks, the default run
config (DP-SGD at ε = 3, SecAgg+), 2 rounds. Measured, one after the other:

- simulation: `fedrisk simulate --data POOLED --contract C --split-by bank` on the very
  same three tables (the whole command: interpreter, Ray start-up, training);
- deployment, `--clientapp fork` (`consortium up` default: SuperNodes with
  `--isolation process` and the bank's executor forking each message from a process
  with torch loaded);
- deployment, `--clientapp spawn` (the bank's executor runs each message in a fresh
  interpreter, as Flower's default `flwr-clientapp` does).

For each deployment: `up` (SuperLink, key registration, SuperNodes connected), `run`
(`flwr run` submission to metrics.json) and `down`, over TLS with SuperNode
authentication on loopback. Writes benchmarks/results/deployment.json.

    python benchmarks/deployment.py [--rounds 2] [--repeat 1] [--modes fork spawn]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fedrisk.consortium import consortium_down, consortium_run, consortium_up, init_consortium

RESULTS = Path(__file__).parent / "results"
BANKS = ["northeast", "midwest", "south_atlantic"]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def free_base_port(count: int) -> int:
    """A base port with `count` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pooled_tables(consortium: Path, folder: Path) -> tuple[Path, Path]:
    """The three banks' own files, pooled with a `bank` column, plus their contract."""
    tables = [pd.read_csv(consortium / "banks" / b / "data.csv").assign(bank=b) for b in BANKS]
    pooled = folder / "pooled.csv"
    pd.concat(tables, ignore_index=True).to_csv(pooled, index=False)
    return pooled, consortium / "banks" / BANKS[0] / "contract.toml"


def simulate(pooled: Path, contract: Path, rounds: int, output: Path) -> dict:
    """`fedrisk simulate` on the same three tables; wall time of the whole command."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "fedrisk.cli", "simulate", "--data", str(pooled),
                    "--contract", str(contract), "--split-by", "bank", "--rounds", str(rounds),
                    "--output-dir", str(output)], check=True, env=ENV, capture_output=True)
    wall = time.monotonic() - started
    metrics = json.loads((output / "metrics.json").read_text())
    return {"engine": "simulation", "wall_seconds": round(wall, 1), **summary(metrics)}


def deploy(root: Path, mode: str, rounds: int, name: str) -> dict:
    """`consortium up`, one run, `consortium down`; wall time of each step."""
    started = time.monotonic()
    try:
        consortium_up(root, clientapp=mode)
        up = time.monotonic() - started
        metrics = consortium_run(root, {"num-server-rounds": rounds}, name=name,
                                 echo=lambda line: None)
        run = time.monotonic() - started - up
    finally:
        before_down = time.monotonic()
        consortium_down(root)
        down = time.monotonic() - before_down
    return {"engine": f"deployment ({mode})", "up_seconds": round(up, 1),
            "wall_seconds": round(run, 1), "down_seconds": round(down, 1), **summary(metrics)}


def summary(metrics: dict) -> dict:
    """What the comparison needs from metrics.json."""
    return {"round_seconds": [r["seconds"] for r in metrics["rounds"]],
            "final_auc": metrics["final"]["auc"], "epsilon_max": metrics["final"]["epsilon_max"],
            "banks": sorted(b["id"] for b in metrics["banks"])}


def main() -> None:
    """Measure simulation and deployments, print a table and write results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["fork", "spawn"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "consortium"
        init_consortium(root, BANKS, base_port=free_base_port(len(BANKS) + 2))
        pooled, contract = pooled_tables(root, Path(folder))
        for i in range(args.repeat):
            rows.append(simulate(pooled, contract, args.rounds, Path(folder) / f"sim-{i}"))
            print(rows[-1], flush=True)
            for mode in args.modes:
                rows.append(deploy(root, mode, args.rounds, f"{mode}-{i}"))
                print(rows[-1], flush=True)
    result = {"job": {"banks": BANKS, "rounds": args.rounds, "config": "defaults (DP ε=3, "
                      "SecAgg+)", "transport": "TLS + SuperNode auth, loopback"},
              "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
              "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deployment.json").write_text(json.dumps(result, indent=2))
    print("| engine | up s | run wall s | s/round | final AUC |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r.get('up_seconds', '-')} | {r['wall_seconds']} | "
              f"{', '.join(f'{s:.1f}' for s in r['round_seconds'])} | {r['final_auc']:.4f} |")


if __name__ == "__main__":
    main()
