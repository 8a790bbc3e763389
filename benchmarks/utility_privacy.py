"""Utility vs privacy: the consortium model against what pooling or going alone would give.

For lending_club (5 census-region banks), credit_data (5 Dirichlet banks) and a
200,000-row synthetic consortium like lending_club (5 Dirichlet banks, to show how the
cost of DP shrinks as banks grow), per seed:

- federated non-private and federated DP at ε ∈ {1, 3, 8} per bank (whole run, δ below
  1/n), with the project's defaults (chosen by ``recipe_search.py`` on selection data,
  never on these held-out splits);
- the references on the same splits: centralized non-private MLP, logistic regression
  and GBDT (and the best of them), each bank's own non-private logistic regression
  (what it can build alone) and, on the two public datasets, local-only DP at each ε;
- the count of banks whose consortium model beats their own non-private logistic
  regression, at each ε;
- the mean PD of the (consortium-calibrated) DP model over the observed default rate;
- personalization at ε = 3 (public datasets): the same run with the other
  ``personalization`` setting, so each bank's personalized model is compared with the
  global model of a run that spent its whole budget on federated rounds.

All AUCs are EXACT, recomputed offline from each run's saved models on the banks'
held-out splits, not the noisy DP evaluation of metrics.json. Summaries are the mean
over seeds with a 95% percentile-bootstrap interval of that mean (scipy, 10,000
resamples). Results are written after every seed to benchmarks/results/utility_privacy.json
(merged per dataset), with a plot utility_privacy.png.

    python benchmarks/utility_privacy.py [--seeds 0 1 2 3 4] [--datasets lending_club ...]
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
import numpy as np
from scipy.stats import bootstrap

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedrisk.config import RunConfig  # noqa: E402
from fedrisk.data.synthetic import synthesize_like  # noqa: E402
from fedrisk.simulations.exact import exact_evaluation  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DATASETS = ("lending_club", "credit_data", "synthetic")
EPSILONS = (1.0, 3.0, 8.0)
SYNTHETIC_ROWS = 200_000
CONFIDENCE = 0.95
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def simulate(data_args: list[str], seed: int, epsilon: float | None, baselines: bool,
             overrides: dict[str, str] | None = None) -> dict:
    """One `fedrisk simulate` run: its metrics.json, with EXACT AUCs and calibration.

    Under DP, metrics.json's AUCs are read off noisy histograms (the banks' DP
    evaluation releases). A study on public data wants the exact ones: they are
    recomputed from the saved global and personalized models on every bank's held-out
    split (:func:`fedrisk.simulations.exact.exact_evaluation`) and replace
    ``final.auc`` and each bank's ``auc`` and ``personalized_auc``.
    """
    with tempfile.TemporaryDirectory() as output:
        args = ["simulate", *data_args, "--seed", str(seed), "--output-dir", output]
        args += ["--no-dp"] if epsilon is None else ["--target-epsilon", str(epsilon)]
        args += ["--baselines"] if baselines else []
        if overrides:
            args += ["--run-config", " ".join(f"{k}={v}" for k, v in overrides.items())]
        subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], check=True, env=ENV,
                       capture_output=True)
        metrics = json.loads((Path(output) / "metrics.json").read_text())
        exact = exact_evaluation(Path(output))
    metrics["final"] |= {"auc": exact["auc"], "exact_calibration": exact["calibration"]}
    for bank in metrics["banks"]:
        bank |= {key: exact["banks"][bank["id"]][key] for key in ("auc", "personalized_auc")}
    return metrics


def seed_runs(dataset: str, data_args: list[str], seed: int) -> dict:
    """Every run of one dataset and seed, reduced to the numbers the summary needs."""
    public = dataset != "synthetic"
    non_private = simulate(data_args, seed, None, baselines=True)
    alone = {b["id"]: b["local_only_nonprivate_auc"] for b in non_private["banks"]}
    refs = non_private["baselines"]
    row = {"fl_non_private": non_private["final"]["auc"],
           "banks_better_than_alone_non_private": _better_than_alone(non_private, alone)}
    for key in ("centralized_mlp_auc", "centralized_logistic_auc", "centralized_gbdt_auc",
                "centralized_best_auc", "local_only_nonprivate_auc_mean"):
        row[key.removesuffix("_auc").removesuffix("_auc_mean")] = refs[key]
    per_bank: dict[str, dict] = {bank: {"alone": auc} for bank, auc in alone.items()}
    for epsilon in EPSILONS:
        label = f"eps{epsilon:g}"
        run = simulate(data_args, seed, epsilon, baselines=public)
        calibration = run["final"]["exact_calibration"]
        row |= {f"fl_dp_{label}": run["final"]["auc"],
                f"gap_to_centralized_best_{label}": refs["centralized_best_auc"]
                - run["final"]["auc"],
                f"banks_better_than_alone_{label}": _better_than_alone(run, alone),
                f"mean_pd_over_default_rate_{label}": calibration["mean_pd"]
                / calibration["observed_default_rate"]}
        if public:
            row[f"local_only_dp_{label}"] = run["baselines"]["local_only_auc_mean"]
        for bank in run["banks"]:
            per_bank[bank["id"]][f"global_{label}"] = bank["auc"]
            if epsilon == 3.0 and bank["personalized_auc"] is not None:
                per_bank[bank["id"]]["personalized_eps3"] = bank["personalized_auc"]
    if public:
        _add_personalization_run(row, per_bank, data_args, seed)
    return {"summary": row, "banks": per_bank}


def _add_personalization_run(row: dict, per_bank: dict, data_args: list[str], seed: int) -> None:
    """ε = 3 again with the other ``personalization`` setting than the default."""
    default = RunConfig().personalization
    other = "none" if default == "finetune" else "finetune"
    run = simulate(data_args, seed, 3.0, baselines=False, overrides={"personalization": other})
    row[f"fl_dp_eps3_personalization_{other}"] = run["final"]["auc"]
    for bank in run["banks"]:
        entry = per_bank[bank["id"]]
        entry[f"global_eps3_personalization_{other}"] = bank["auc"]
        if bank["personalized_auc"] is not None:
            entry["personalized_eps3"] = bank["personalized_auc"]


def _better_than_alone(run: dict, alone: dict[str, float]) -> int:
    """Banks whose consortium model beats their own non-private logistic regression."""
    return sum(bank["auc"] > alone[bank["id"]] for bank in run["banks"])


def summarize(values: list[float]) -> dict:
    """Mean over seeds with a percentile-bootstrap confidence interval of the mean."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2 or np.ptp(data) == 0:
        low = high = float(data.mean())
    else:
        interval = bootstrap((data,), np.mean, confidence_level=CONFIDENCE, n_resamples=10_000,
                             method="percentile", random_state=0).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return {"mean": float(data.mean()), "ci_low": low, "ci_high": high,
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "values": list(values)}


def summarize_dataset(seeds: dict[int, dict]) -> dict:
    """Summaries over seeds of every per-seed number and of personalization per bank."""
    runs = list(seeds.values())
    rows = {key: summarize([r["summary"][key] for r in runs]) for key in runs[0]["summary"]}
    result = {"rows": rows}
    default = RunConfig().personalization
    none_key = ("global_eps3" if default == "none"
                else "global_eps3_personalization_none")
    finetune_global = "global_eps3" if default == "finetune" else (
        "global_eps3_personalization_finetune")
    first_bank = next(iter(runs[0]["banks"].values()))
    if {"personalized_eps3", none_key, finetune_global} <= first_bank.keys():
        result["personalization"] = {
            bank: {"personalized_minus_global_same_run": summarize(
                       [r["banks"][bank]["personalized_eps3"] - r["banks"][bank][finetune_global]
                        for r in runs]),
                   "personalized_minus_global_without_finetune": summarize(
                       [r["banks"][bank]["personalized_eps3"] - r["banks"][bank][none_key]
                        for r in runs])}
            for bank in runs[0]["banks"]}
    return result


def dataset_args(dataset: str, workdir: Path) -> list[str]:
    """``fedrisk simulate`` arguments selecting a dataset (the synthetic one is drawn here)."""
    if dataset != "synthetic":
        return ["--dataset", dataset]
    table = synthesize_like("lending_club", SYNTHETIC_ROWS, workdir / "synthetic", seed=0)
    return ["--data", str(table.data_path), "--contract", str(table.contract_path),
            "--banks", "5"]


def run(datasets: list[str], seeds: list[int], path: Path) -> dict:
    """Measure every dataset and seed, saving the merged results after every seed."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    results |= {"seeds": seeds, "confidence": CONFIDENCE, "epsilons": list(EPSILONS),
                "synthetic_rows": SYNTHETIC_ROWS}
    results["datasets"] = {name: entry for name, entry in results.get("datasets", {}).items()
                           if "rows" in entry}  # an older layout is measured again
    with tempfile.TemporaryDirectory() as workdir:
        for dataset in datasets:
            data_args = dataset_args(dataset, Path(workdir))
            per_seed: dict[int, dict] = {}
            for seed in seeds:
                per_seed[seed] = seed_runs(dataset, data_args, seed)
                print(f"{dataset} seed {seed}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in per_seed[seed]["summary"].items()), flush=True)
                results["datasets"][dataset] = {"seeds": list(per_seed),
                                                **summarize_dataset(per_seed),
                                                "per_seed": per_seed}
                path.write_text(json.dumps(results, indent=2))
    return results


def print_tables(results: dict) -> None:
    """Markdown tables, as quoted in the README."""
    print("| dataset | setting | mean over seeds [95% bootstrap CI] |")
    print("|---|---|---|")
    for dataset, entry in results["datasets"].items():
        for label, stats in entry["rows"].items():
            print(f"| {dataset} | {label} | {stats['mean']:.3f} "
                  f"[{stats['ci_low']:.3f}, {stats['ci_high']:.3f}] |")
    print("\n| dataset | bank | personalized - global, same run | "
          "personalized - global of a run without fine-tuning |")
    print("|---|---|---|---|")
    for dataset, entry in results["datasets"].items():
        for bank, diffs in entry.get("personalization", {}).items():
            cells = [f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                     for d in diffs.values()]
            print(f"| {dataset} | {bank} | {' | '.join(cells)} |")


def plot(results: dict, path: Path) -> None:
    """AUC against ε per dataset (bootstrap intervals), with the references as lines."""
    datasets = list(results["datasets"].items())
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.8),
                                squeeze=False)
    for axis, (dataset, entry) in zip(axes[0], datasets, strict=True):
        rows = entry["rows"]
        for prefix, style, label in (("fl_dp", "o-", "federated DP"),
                                     ("local_only_dp", "s--", "local-only DP (mean of banks)")):
            keys = [f"{prefix}_eps{e:g}" for e in EPSILONS]
            if keys[0] not in rows:
                continue
            means = np.array([rows[k]["mean"] for k in keys])
            errors = np.array([[m - rows[k]["ci_low"], rows[k]["ci_high"] - m]
                               for k, m in zip(keys, means, strict=True)]).T
            axis.errorbar(EPSILONS, means, yerr=errors, fmt=style, capsize=3, label=label)
        for key, style, label in (("fl_non_private", "-", "federated non-private"),
                                  ("centralized_best", ":", "centralized best (non-private)"),
                                  ("local_only_nonprivate", "-.",
                                   "alone, non-private logistic (mean)")):
            axis.axhline(rows[key]["mean"], color="gray" if style == "-" else "black",
                         linestyle=style, label=label)
        axis.set_xscale("log")
        axis.minorticks_off()
        axis.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
        axis.set_xlabel("ε per bank")
        axis.set_ylabel("consortium AUC (exact)")
        axis.set_title(dataset)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    """Parse arguments, measure, print and write results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "utility_privacy.json"
    results = run(args.datasets, args.seeds, path)
    plot(results, RESULTS / "utility_privacy.png")
    print_tables(results)


if __name__ == "__main__":
    main()
