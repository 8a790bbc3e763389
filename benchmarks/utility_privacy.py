"""Utility vs privacy: consortium AUC of federated DP training against its references.

For lending_club and credit_data: non-private FL and DP FL at ε ∈ {1, 3, 8} (per bank,
whole run), centralized non-private (the run's MLP, logistic regression, GBDT) and
mean local-only DP (same ε, same splits) and local-only non-private logistic,
over 3 seeds (mean ± sd), all EXACT AUCs computed offline from each run's saved
models on the banks' held-out splits (not the noisy DP evaluation of metrics.json);
plus the per-epoch time of DP-SGD relative to non-private training of the same model,
and DP-SGD throughput. Every number is measured here,
in this run. Writes benchmarks/results/utility_privacy.{json,png}.

    python benchmarks/utility_privacy.py [--seeds 0 1 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedrisk.config import RunConfig  # noqa: E402
from fedrisk.data import embedded_banks, load_embedded, stratified_split  # noqa: E402
from fedrisk.models import ModelSpec, build_model  # noqa: E402
from fedrisk.privacy.accounting import plan_schedule  # noqa: E402
from fedrisk.privacy.dpsgd import TrainingSettings, train_locally  # noqa: E402
from fedrisk.simulations.exact import exact_evaluation  # noqa: E402

RESULTS = Path(__file__).parent / "results"
EPSILONS = (1.0, 3.0, 8.0)
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def simulate(dataset: str, seed: int, rounds: int, epsilon: float | None) -> dict:
    """One `fedrisk simulate --baselines` run; its metrics.json with EXACT AUCs.

    Under DP, metrics.json's AUCs are read off noisy histograms (the banks' DP
    evaluation releases). A study on public data wants the exact ones: they are
    recomputed offline from the saved global and personalized models on every bank's
    held-out split (:func:`fedrisk.simulations.exact.exact_evaluation`), and replace
    ``final.auc`` and each bank's ``auc`` and ``personalized_auc``.
    """
    with tempfile.TemporaryDirectory() as output:
        args = ["simulate", "--dataset", dataset, "--seed", str(seed), "--rounds", str(rounds),
                "--output-dir", output, "--baselines"]
        args += ["--no-dp"] if epsilon is None else ["--target-epsilon", str(epsilon)]
        subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], check=True, env=ENV,
                       capture_output=True)
        metrics = json.loads((Path(output) / "metrics.json").read_text())
        exact = exact_evaluation(Path(output))
    metrics["final"]["auc"] = exact["auc"]
    for bank in metrics["banks"]:
        bank |= {key: exact["banks"][bank["id"]][key] for key in ("auc", "personalized_auc")}
    return metrics


def dp_time_ratio(dataset: str, epochs: int = 5) -> dict:
    """Seconds per epoch of DP-SGD vs non-private SGD, same model, data and batch size."""
    config = RunConfig()
    _, contract = load_embedded(dataset)
    tables = embedded_banks(dataset)
    train = max((stratified_split(t, contract, 0.2, 0)[0] for t in tables.values()), key=len)
    features, labels = contract.encode(train), contract.labels(train)
    settings = TrainingSettings(epochs, config.batch_size, config.learning_rate, config.momentum,
                                config.max_grad_norm)
    timings: dict[str, list[float]] = {"non_private": [], "dp": []}
    for repeat in range(3):  # interleaved; the first pass warms up torch and Opacus
        for name in timings:
            schedule = (plan_schedule(len(labels), config.batch_size, epochs, 1, 3.0, 1e-5)
                        if name == "dp" else None)
            model = build_model(ModelSpec("mlp", contract.n_features, config.hidden_layers,
                                          contract.prior_default_rate))
            start = time.perf_counter()
            train_locally(model, features, labels, settings, schedule, seed=0)
            if repeat:
                timings[name].append((time.perf_counter() - start) / epochs)
    timings = {name: min(values) for name, values in timings.items()}
    return {"seconds_per_epoch_non_private": timings["non_private"],
            "seconds_per_epoch_dp": timings["dp"],
            "dp_time_ratio": timings["dp"] / timings["non_private"],
            "dp_samples_per_second": len(labels) / timings["dp"], "n_train": len(labels)}


def summarize(values: list[float]) -> dict:
    """Mean and sample standard deviation."""
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def run(seeds: list[int], rounds: int) -> dict:
    """All measurements for both datasets."""
    results = {"seeds": seeds, "rounds": rounds, "datasets": {}}
    for dataset in ("lending_club", "credit_data"):
        rows: dict[str, list[float]] = {}
        for seed in seeds:
            for epsilon in (None, *EPSILONS):
                label = "fl_non_private" if epsilon is None else f"fl_dp_eps{epsilon:g}"
                metrics = simulate(dataset, seed, rounds, epsilon)
                rows.setdefault(label, []).append(metrics["final"]["auc"])
                if epsilon is None:
                    refs = metrics["baselines"]
                    for key, name in (("centralized_auc", "centralized_non_private"),
                                      ("centralized_logistic_auc", "centralized_logistic"),
                                      ("centralized_gbdt_auc", "centralized_gbdt"),
                                      ("centralized_best_auc", "centralized_best"),
                                      ("local_only_nonprivate_auc_mean",
                                       "local_only_nonprivate_logistic")):
                        rows.setdefault(name, []).append(refs[key])
                else:
                    rows.setdefault(f"local_only_dp_eps{epsilon:g}", []).append(
                        metrics["baselines"]["local_only_auc_mean"])
                    if epsilon == 3.0:
                        banks = metrics["banks"]
                        counts = {
                            "banks_global_above_local_eps3": sum(
                                b["auc"] > b["local_only_auc"] for b in banks),
                            "banks_global_above_local_nonprivate_eps3": sum(
                                b["auc"] > b["local_only_nonprivate_auc"] for b in banks),
                            "banks_personalized_at_least_global_eps3": sum(
                                b["personalized_auc"] >= b["auc"] for b in banks),
                            "banks_personalized_at_least_local_eps3": sum(
                                b["personalized_auc"] >= b["local_only_auc"] for b in banks),
                            "personalized_auc_mean_eps3": sum(
                                b["personalized_auc"] for b in banks) / len(banks),
                        }
                        for key, value in counts.items():
                            rows.setdefault(key, []).append(value)
                print(f"{dataset} seed {seed} {label}: AUC {metrics['final']['auc']:.4f}",
                      flush=True)
        results["datasets"][dataset] = {k: summarize(v) for k, v in rows.items()}
        results["datasets"][dataset]["timing"] = dp_time_ratio(dataset)
    return results


def print_table(results: dict) -> None:
    """Markdown table, as quoted in the README."""
    print("| dataset | setting | AUC or bank count (mean ± sd) |")
    print("|---|---|---|")
    for dataset, rows in results["datasets"].items():
        for label, stats in rows.items():
            if label == "timing":
                continue
            print(f"| {dataset} | {label} | {stats['mean']:.4f} ± {stats['sd']:.4f} |")
    for dataset, rows in results["datasets"].items():
        t = rows["timing"]
        print(f"{dataset}: DP-SGD/non-private time per epoch {t['dp_time_ratio']:.2f}x, "
              f"DP-SGD {t['dp_samples_per_second']:,.0f} samples/s")


def plot(results: dict, path: Path) -> None:
    """AUC against ε per dataset, with the references as horizontal lines."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, (dataset, rows) in zip(axes, results["datasets"].items(), strict=True):
        dp = [rows[f"fl_dp_eps{e:g}"]["mean"] for e in EPSILONS]
        local = [rows[f"local_only_dp_eps{e:g}"]["mean"] for e in EPSILONS]
        axis.errorbar(EPSILONS, dp, yerr=[rows[f"fl_dp_eps{e:g}"]["sd"] for e in EPSILONS],
                      marker="o", label="federated DP")
        axis.plot(EPSILONS, local, "s--", label="local-only DP (mean)")
        axis.axhline(rows["fl_non_private"]["mean"], color="gray", label="federated non-private")
        axis.axhline(rows["centralized_non_private"]["mean"], color="black", linestyle=":",
                     label="centralized non-private")
        axis.set_xscale("log")
        axis.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
        axis.set_xlabel("ε per bank (δ = 1e-5)")
        axis.set_ylabel("consortium AUC")
        axis.set_title(dataset)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    """Parse arguments, measure, print and write results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=RunConfig().num_server_rounds)
    parser.add_argument("--timing-only", action="store_true",
                        help="re-measure only the DP/non-private time ratio in the saved results")
    args = parser.parse_args()
    if args.timing_only:
        results = json.loads((RESULTS / "utility_privacy.json").read_text())
        for dataset, rows in results["datasets"].items():
            rows["timing"] = dp_time_ratio(dataset)
    else:
        results = run(args.seeds, args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "utility_privacy.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "utility_privacy.png")
    print_table(results)


if __name__ == "__main__":
    main()
