"""Calibrated PDs under DP: mean predicted PD against the observed default rate.

For lending_club and credit_data, default DP runs (`fedrisk simulate`, ε = 3, eval-epsilon
1) over 3 seeds. For each run, EXACT figures on the pooled held-out rows, computed offline
from the saved model (:func:`fedrisk.simulations.exact.exact_evaluation`): mean PD of the
uncalibrated aggregate and of the stored (consortium-calibrated) model against the default
rate, and the calibration slope. Then, noise against bias: the run's final model's real
held-out histograms (per bank, on the DP grid) are released again ``--releases`` times at
each bank's own σ eval, pooled, and the calibration refitted as the coordinator fits it;
``exact_hist`` is the fit on the noise-free histograms (the grid's bias), the spread over
releases is the noise's share. Writes benchmarks/results/calibration.json.

    python benchmarks/calibration.py [--seeds 0 1 2] [--releases 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.special import expit

from fedrisk.models import load_model
from fedrisk.models.calibration import fit_histogram_calibration
from fedrisk.models.histograms import eval_grid
from fedrisk.privacy.dpsgd import predict_logits
from fedrisk.privacy.release import gaussian_release
from fedrisk.simulations.exact import exact_evaluation, held_out_splits

RESULTS = Path(__file__).parent / "results"
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
PERCENTILES = (1, 5, 50, 95, 99)


def run_once(dataset: str, seed: int, releases: int) -> dict:
    """One default DP simulation; exact calibration figures and the noise study."""
    with tempfile.TemporaryDirectory() as output:
        subprocess.run([sys.executable, "-m", "fedrisk.cli", "simulate", "--dataset", dataset,
                        "--seed", str(seed), "--output-dir", output], check=True, env=ENV,
                       capture_output=True)
        metrics = json.loads((Path(output) / "metrics.json").read_text())
        exact = exact_evaluation(Path(output))
        noise = noise_study(Path(output), metrics, releases)
    observed = exact["calibration"]["observed_default_rate"]
    return {"dataset": dataset, "seed": seed, "auc": exact["auc"], **exact["calibration"],
            "ratio_uncalibrated": exact["calibration"]["mean_pd_uncalibrated"] / observed,
            "ratio_calibrated": exact["calibration"]["mean_pd"] / observed,
            "reported": {k: metrics["final"][k] for k in (
                "mean_pd", "observed_default_rate", "calibration_slope", "pd_calibration")},
            "noise_study": noise}


def noise_study(run_dir: Path, metrics: dict, releases: int) -> dict:
    """Calibrated mean PD / default rate over fresh releases of the run's real histograms."""
    config = metrics["config"]
    spec, model = load_model(run_dir / "model.safetensors")
    model.calibration = None  # the aggregate as trained
    grid = eval_grid(spec.prior_default_rate, config["eval-bins"], config["eval-logit-low"],
                     config["eval-logit-high"])
    sigma = {b["id"]: b["eval_noise_multiplier"] for b in metrics["banks"]}
    noise_sd = float(np.sqrt(sum(s ** 2 for s in sigma.values())))
    splits = held_out_splits(run_dir)
    logits = {bank: predict_logits(model, split.features) for bank, split in splits.items()}
    hists = {bank: grid.histograms(logits[bank], split.labels) for bank, split in splits.items()}
    every_logit = np.concatenate(list(logits.values()))
    rate = np.concatenate([split.labels for split in splits.values()]).mean()

    def ratio(fitted) -> float:
        return np.nan if fitted is None else fitted.probabilities(every_logit).mean() / rate

    exact_pos = sum(h[0] for h in hists.values()).astype(float)
    exact_neg = sum(h[1] for h in hists.values()).astype(float)
    study = {"noise_sd_pooled": noise_sd, "uncalibrated": float(expit(every_logit).mean() / rate)}
    for name, method, sd in (("platt_noise_aware", "platt", noise_sd),
                             ("platt_clipped", "platt", 0.0)):
        ratios = np.array([ratio(fit_histogram_calibration(
            sum(gaussian_release(h[0], sigma[b]) for b, h in hists.items()).astype(float),
            sum(gaussian_release(h[1], sigma[b]) for b, h in hists.items()).astype(float),
            grid, method, sd)) for _ in range(releases)])
        study[name] = {
            "exact_hist": ratio(fit_histogram_calibration(exact_pos, exact_neg, grid, method)),
            "median": float(np.nanmedian(ratios)), "sd": float(np.nanstd(ratios)),
            "within_20pct": float(np.mean(np.abs(ratios - 1) <= 0.2)),
            "failed": float(np.mean(np.isnan(ratios))),
            "percentiles": {p: float(np.nanpercentile(ratios, p)) for p in PERCENTILES}}
    return study


def main() -> None:
    """Run every dataset and seed, print a line each, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--releases", type=int, default=500)
    args = parser.parse_args()
    runs = []
    for dataset in ("lending_club", "credit_data"):
        for seed in args.seeds:
            result = run_once(dataset, seed, args.releases)
            runs.append(result)
            study = result["noise_study"]["platt_noise_aware"]
            print(f"{dataset:12s} seed {seed}: AUC {result['auc']:.3f}  default rate "
                  f"{result['observed_default_rate']:.4f}  mean PD uncalibrated "
                  f"{result['mean_pd_uncalibrated']:.4f} ({result['ratio_uncalibrated']:.2f}x)"
                  f"  calibrated {result['mean_pd']:.4f} ({result['ratio_calibrated']:.2f}x)  "
                  f"slope {result['calibration_slope']:.2f}  | refits: median "
                  f"{study['median']:.2f}x sd {study['sd']:.2f}, within 20% "
                  f"{study['within_20pct']:.0%}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibration.json").write_text(json.dumps({"runs": runs}, indent=2,
                                                         default=float))


if __name__ == "__main__":
    main()
