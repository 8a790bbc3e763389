"""Capacity: a synthetic consortium of many banks or large banks, DP ε = 3, SecAgg+ on.

Each case is what a user types, run as a subprocess and watched from outside:

    fedrisk data synthesize --like lending_club --rows ROWS --out DIR
    fedrisk simulate --data DIR/data.parquet --contract DIR/contract.toml --banks N --rounds 10

Cases: (a) 100 banks over 1,000,000 rows (about 10,000 each), (b) 5 banks over the same
rows (about 200,000 each), and the default `fedrisk simulate` (5 lending_club banks,
5 rounds). Measured per case, on this machine:

- wall time of `simulate` (start-up, every round, final evaluation, files written);
- peak memory of all its processes together (the CLI, Ray's head processes and every
  Ray worker): the largest sum over processes of the proportional set size (PSS, so
  shared pages such as Ray's object store count once), sampled every 0.5 s;
- CPU seconds of all its processes (user + system), and the load average around it;
- seconds per round (metrics.json `rounds[].seconds`);
- raw DP-SGD compute: the banks' own `train_locally` at the run's batch size, one thread,
  timed here in CPU seconds on synthetic rows of the same width, times the samples every
  bank trained
  (its train rows × local epochs × rounds, plus one personalization epoch); its share of
  the run's CPU seconds, and the overhead ratio (wall − 10 s start-up) / (DP-SGD CPU / cores).

Targets (issue 11): cases (a) and (b) each ≤ 10 minutes and ≤ 8 GiB; the default run's
wall ≤ 3 × its raw DP-SGD compute + 10 s. Writes benchmarks/results/scale.{json,png}.

    python benchmarks/scale.py [--quick] [--cases a,b,default] [--rounds 10]
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from dp_throughput import FEATURES, GRADES, HIDDEN, synthetic_rows  # noqa: E402

from fedrisk.models import ModelSpec, build_model  # noqa: E402
from fedrisk.privacy.accounting import DPSchedule, steps_per_epoch  # noqa: E402
from fedrisk.privacy.dpsgd import TrainingSettings, train_locally  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
TARGET_SECONDS, TARGET_GIB, STARTUP_SECONDS, TARGET_OVERHEAD = 600, 8.0, 10.0, 3.0
CASES = {  # name: (rows synthesized, banks); "default" is the embedded default run
    "a": (1_000_000, 100), "b": (1_000_000, 5), "default": (0, 0)}
QUICK_CASES = {"a": (40_000, 20), "b": (40_000, 3), "default": (0, 0)}


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it (Ray's head and workers included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watched_run(command: list[str]) -> dict:
    """Run ``command``; its wall time, peak total PSS and CPU seconds of its process tree."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak, cpu_by_pid = 0, {}
    while process.poll() is None:
        pids = descendants(process.pid)
        peak = max(peak, sum(pss_bytes(pid) for pid in pids))
        for pid in pids:
            cpu_by_pid[pid] = max(cpu_by_pid.get(pid, 0.0), cpu_seconds(pid))
        time.sleep(0.5)
    wall = time.perf_counter() - start
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return {"wall_seconds": wall, "peak_memory_gib": peak / 2**30,
            "cpu_seconds": sum(cpu_by_pid.values()), "load_before": load_before,
            "load_after": os.getloadavg()[0], "output_tail": output.splitlines()[-12:]}


def dp_sgd_rate(batch_size: int, rows: int = 20_000) -> float:
    """Samples per CPU second of the banks' DP-SGD (``train_locally``, one thread).

    CPU time of the calling thread (torch runs on it alone), so other work on the
    machine does not inflate it.
    """
    features, labels, grades = synthetic_rows(rows)
    per_epoch = steps_per_epoch(rows, batch_size)
    rates = []
    for _ in range(3):
        model = build_model(ModelSpec("mlp", FEATURES, HIDDEN, 0.05, GRADES))
        start = time.thread_time()
        train_locally(model, features, labels, TrainingSettings(1, batch_size, 1.0, 0.9, 1.0),
                      DPSchedule(1 / per_epoch, per_epoch, 1.0), seed=0, grades=grades)
        rates.append(rows / (time.thread_time() - start))
    return float(np.median(rates))


def run_case(name: str, rows: int, banks: int, rounds: int, folder: Path) -> dict:
    """Synthesize (unless default), simulate, and measure one case."""
    cli = [sys.executable, "-m", "fedrisk.cli"]
    output = folder / f"run-{name}"
    if name == "default":
        command = [*cli, "simulate", "--output-dir", str(output)]
    else:
        data = folder / f"data-{rows}"
        if not (data / "data.parquet").exists():
            subprocess.run([*cli, "data", "synthesize", "--like", "lending_club", "--rows",
                            str(rows), "--out", str(data)], check=True, env=ENV,
                           capture_output=True)
        command = [*cli, "simulate", "--data", str(data / "data.parquet"), "--contract",
                   str(data / "contract.toml"), "--banks", str(banks), "--rounds", str(rounds),
                   "--output-dir", str(output)]
    print(f"case {name}: fedrisk {' '.join(command[3:])}", flush=True)
    measured = watched_run(command)
    metrics = json.loads((output / "metrics.json").read_text())
    return {"case": name, "command": " ".join(["fedrisk", *command[3:]]),
            "banks": len(metrics["banks"]), **measured, **_from_metrics(metrics)}


def _from_metrics(metrics: dict) -> dict:
    config = metrics["config"]
    seconds = [r["seconds"] for r in metrics["rounds"]]
    trained = sum(b["n_train"] for b in metrics["banks"])
    epochs = config["local-epochs"] * len(seconds)
    if config["personalization"] == "finetune":
        epochs += config["personalization-epochs"]
    return {"rounds": len(seconds), "round_seconds": seconds,
            "round_seconds_after_first": float(np.mean(seconds[1:])) if len(seconds) > 1
            else None, "train_rows": trained, "dp_samples": trained * epochs,
            "batch_size": config["batch-size"], "final_auc": metrics["final"]["auc"],
            "epsilon_max": metrics["final"]["epsilon_max"]}


def add_dp_share(row: dict, rate: float, cores: int) -> dict:
    """Raw DP-SGD compute of the case and how the run's time compares to it."""
    dp_cpu = row["dp_samples"] / rate
    row.update(dp_sgd_samples_per_s=rate, dp_sgd_cpu_seconds=dp_cpu,
               dp_sgd_share_of_cpu=dp_cpu / row["cpu_seconds"],
               overhead_ratio=(row["wall_seconds"] - STARTUP_SECONDS) / (dp_cpu / cores))
    if row["case"] == "default":
        row["target_met"] = row["wall_seconds"] <= TARGET_OVERHEAD * dp_cpu / cores \
            + STARTUP_SECONDS
    else:
        row["target_met"] = (row["wall_seconds"] <= TARGET_SECONDS
                             and row["peak_memory_gib"] <= TARGET_GIB)
    return row


def merged_cases(path: Path, rows: list[dict]) -> list[dict]:
    """``rows`` plus the cases of an earlier result file that this run did not measure."""
    measured = {row["case"] for row in rows}
    earlier = json.loads(path.read_text())["cases"] if path.is_file() else []
    kept = [row for row in earlier if row["case"] not in measured]
    return sorted([*kept, *rows], key=lambda row: list(CASES).index(row["case"]))


def plot(rows: list[dict]) -> None:
    """Seconds per round of each case, with the DP-SGD compute per round beside it."""
    figure, axis = plt.subplots(figsize=(6, 3.4))
    cores = os.cpu_count() or 1
    for i, row in enumerate(rows):
        axis.bar(i - 0.2, row["wall_seconds"] / row["rounds"], 0.4,
                 color="tab:blue", label="wall per round" if i == 0 else None)
        axis.bar(i + 0.2, row["dp_sgd_cpu_seconds"] / cores / row["rounds"], 0.4,
                 color="tab:orange", label=f"DP-SGD per round ({cores} cores)" if i == 0
                 else None)
    axis.set_xticks(range(len(rows)), [f"{r['case']}: {r['banks']} banks" for r in rows])
    axis.set_ylabel("seconds")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "scale.png", dpi=110)


def main() -> None:
    """Run the cases one after another, print a table, write JSON and a plot."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small cases (a few minutes)")
    parser.add_argument("--cases", default="a,b,default")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="keep the runs and data in this folder")
    args = parser.parse_args()
    cases = QUICK_CASES if args.quick else CASES
    rounds = 3 if args.quick else args.rounds
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [run_case(name, *cases[name], rounds, folder) for name in args.cases.split(",")]
    rate = dp_sgd_rate(rows[0]["batch_size"])
    rows = [add_dp_share(row, rate, cores) for row in rows]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("scale_quick.json" if args.quick else "scale.json")
    rows = merged_cases(path, rows)
    path.write_text(json.dumps({"cores": cores, "quick": args.quick, "cases": rows}, indent=2))
    if not args.quick:
        plot(rows)
    print("| case | banks | rounds | wall s | s/round (2..) | peak GiB | CPU s | DP-SGD CPU s "
          "| DP-SGD share of CPU | overhead × | AUC | ε max | load | target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        after = r["round_seconds_after_first"]
        print(f"| {r['case']} | {r['banks']} | {r['rounds']} | {r['wall_seconds']:.0f} | "
              f"{after:.1f} | {r['peak_memory_gib']:.2f} | {r['cpu_seconds']:.0f} | "
              f"{r['dp_sgd_cpu_seconds']:.0f} | {r['dp_sgd_share_of_cpu']:.0%} | "
              f"{r['overhead_ratio']:.1f} | {r['final_auc']:.3f} | {r['epsilon_max']:.2f} | "
              f"{r['load_before']:.1f}-{r['load_after']:.1f} | "
              f"{'met' if r['target_met'] else 'MISSED'} |")


if __name__ == "__main__":
    main()
