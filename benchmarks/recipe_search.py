"""Search for the private training recipe, on selection data only.

The defaults of ``[tool.flwr.app.config]`` (model, width, batch size, rounds, local
epochs, learning rate, server optimizer, clipping, personalization, DP steps per epoch)
are chosen here, on selection consortia, and never on a split a benchmark reports:

- **credit_data**, each seed's Dirichlet banks cut to their *train* splits (the split
  ``utility_privacy.py`` trains on), which the simulated banks split again into train and
  validation: the held-out rows ``utility_privacy.py`` reports on are never seen here;
- **synthetic**: rows drawn like credit_data by ``fedrisk data synthesize`` (a Gaussian
  copula per class, fitted on the public table), split into 5 Dirichlet banks the size of
  lending_club's regional banks; **synthetic large** (stage 3): the same with 200,000
  rows, banks twenty times larger, where DP-SGD takes many steps per epoch.

lending_club is not used at all: it is where ``utility_privacy.py`` checks the choice.
Every candidate is a real ``fedrisk simulate`` (Flower, SecAgg+, DP-SGD at ε = 3 per
bank, δ below 1/n) scored by the EXACT AUC of its global model on the validation rows.
Stage 1 moves one lever at a time away from the recipe the search started from (the
defaults before it, pinned in ``STARTING_RECIPE`` so the search reruns as it ran; its
candidate "defaults" is that recipe); stage 2 combines the levers that helped; stage 3
caps the DP steps per local epoch on stage 2's choice, on the small and the large
synthetic banks. Writes benchmarks/results/recipe_search.{json,png}.

    python benchmarks/recipe_search.py --stage 1 --seeds 0 1
    python benchmarks/recipe_search.py --stage 2 --seeds 0 1 2
    python benchmarks/recipe_search.py --stage 3 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from utility_privacy import simulate  # noqa: E402  (this folder: run as a script)

from fedrisk.data import embedded_banks, load_embedded, stratified_split, write_table  # noqa: E402
from fedrisk.data.synthetic import synthesize_like  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TARGET_EPSILON = 3.0
# Synthetic selection consortia: 5 banks the size of lending_club's regional banks, and
# 5 banks twenty times larger (stage 3: where the DP step cap binds).
SYNTHETIC_ROWS = {"synthetic": 10_000, "synthetic large": 200_000}

# The defaults before the search where they differ from today's (which it chose); every
# candidate is a set of run-config overrides of this recipe.
STARTING_RECIPE = {"num-server-rounds": "5", "local-epochs": "2", "personalization": "finetune",
                   "max-steps-per-epoch": "0"}
# Stage 1: one lever at a time.
STAGE_1: dict[str, dict[str, str]] = {
    "defaults": {},
    "personalization none": {"personalization": "none"},
    "logistic": {"model": "logistic"},
    "hidden 16": {"hidden-units": "16"},
    "batch 64": {"batch-size": "64"},
    "batch 1024": {"batch-size": "1024"},
    "1 local epoch, 10 rounds": {"local-epochs": "1", "num-server-rounds": "10"},
    "fedadam": {"strategy": "fedadam", "server-learning-rate": "0.05"},
    "learning rate 0.3": {"learning-rate": "0.3"},
    "clip 0.3, learning rate 3": {"max-grad-norm": "0.3", "learning-rate": "3.0"},
}

# Stage 2: the levers that helped in stage 1 (fewer local epochs and more rounds; the
# whole budget on the federated rounds), combined, against the defaults, on 3 seeds.
_FEWER_EPOCHS = {"local-epochs": "1", "num-server-rounds": "10"}
STAGE_2: dict[str, dict[str, str]] = {
    "defaults": {},
    "personalization none": {"personalization": "none"},
    "1 local epoch, 10 rounds": _FEWER_EPOCHS,
    "1 local epoch, 10 rounds, personalization none": {**_FEWER_EPOCHS,
                                                       "personalization": "none"},
    "1 local epoch, 20 rounds, personalization none": {**_FEWER_EPOCHS,
                                                       "num-server-rounds": "20",
                                                       "personalization": "none"},
    "1 local epoch, 10 rounds, personalization none, learning rate 0.5": {
        **_FEWER_EPOCHS, "personalization": "none", "learning-rate": "0.5"},
}

# Stage 3, from stage 2's choice: cap the DP-SGD steps per local epoch, so that a large
# bank samples larger batches (less noise per averaged gradient) instead of taking more
# noisy steps. On banks of two sizes; no cap at or above ~7 binds on the small ones.
_STAGE_2_CHOICE = {**_FEWER_EPOCHS, "num-server-rounds": "20", "personalization": "none"}
STAGE_3: dict[str, dict[str, str]] = {
    f"max {cap} steps per epoch" if cap else "no cap": {
        **_STAGE_2_CHOICE, "max-steps-per-epoch": str(cap)}
    for cap in (0, 32, 16, 8, 4)
}
STAGES = {1: STAGE_1, 2: STAGE_2, 3: STAGE_3}
CONSORTIA = {1: ("credit_data", "synthetic"), 2: ("credit_data", "synthetic"),
             3: ("synthetic", "synthetic large")}


def selection_data(dataset: str, seed: int, workdir: Path) -> list[str]:
    """``fedrisk simulate`` arguments selecting a selection consortium, written to workdir."""
    if dataset == "credit_data":
        _, contract = load_embedded("credit_data")
        parts = []
        for bank_id, table in embedded_banks("credit_data", seed).items():
            train, _ = stratified_split(table, contract, 0.2, seed)
            parts.append(train.assign(bank=bank_id))
        path = write_table(pd.concat(parts, ignore_index=True), workdir / "train.parquet")
        contract.save(workdir / "contract.toml")
        return ["--data", str(path), "--contract", str(workdir / "contract.toml"),
                "--split-by", "bank"]
    synthetic = synthesize_like("credit_data", SYNTHETIC_ROWS[dataset], workdir, seed)
    return ["--data", str(synthetic.data_path), "--contract", str(synthetic.contract_path),
            "--banks", "5"]


def search(candidates: dict[str, dict[str, str]], consortia: tuple[str, ...],
           seeds: list[int]) -> dict:
    """Validation AUC of every candidate on the selection consortia and every seed.

    Each run is :func:`utility_privacy.simulate` (a real ``fedrisk simulate``, exact
    AUCs recomputed offline); on selection data its held-out rows are validation rows.
    """
    results: dict[str, dict] = {name: {"overrides": o, "auc": {}} for name, o in candidates.items()}
    with tempfile.TemporaryDirectory() as root:
        for dataset in consortia:
            for seed in seeds:
                workdir = Path(root) / f"{dataset}-{seed}"
                workdir.mkdir()
                data_args = selection_data(dataset, seed, workdir)
                for name, overrides in candidates.items():
                    run = simulate(data_args, seed, TARGET_EPSILON, baselines=False,
                                   overrides=STARTING_RECIPE | overrides)
                    auc, banks = run["final"]["auc"], run["banks"]
                    results[name]["auc"].setdefault(dataset, []).append(auc)
                    if any(b["personalized_auc"] is not None for b in banks):
                        results[name].setdefault("banks_personalized_above_global", []).append(
                            sum(b["personalized_auc"] > b["auc"] for b in banks))
                    print(f"{dataset} seed {seed} {name}: {auc:.4f}", flush=True)
    for entry in results.values():
        entry["mean_auc"] = statistics.mean(a for aucs in entry["auc"].values() for a in aucs)
    return results


def plot(saved: dict, path: Path) -> None:
    """Mean validation AUC of every candidate of every stage, per selection consortium."""
    stages = sorted(saved)
    figure, axes = plt.subplots(1, len(stages), figsize=(7 * len(stages), 4.2), squeeze=False)
    for axis, stage in zip(axes[0], stages, strict=True):
        candidates = sorted(saved[stage]["candidates"].items(), key=lambda kv: kv[1]["mean_auc"])
        names = [name for name, _ in candidates]
        for offset, dataset in zip((-0.2, 0.2), candidates[0][1]["auc"], strict=True):
            means = [statistics.mean(entry["auc"][dataset]) for _, entry in candidates]
            axis.barh([i + offset for i in range(len(names))], means, height=0.4, label=dataset)
        axis.set_yticks(range(len(names)), names, fontsize=7)
        axis.set_xlim(0.65, 0.85)
        axis.set_xlabel("validation AUC at ε = 3 (mean over seeds)")
        axis.set_title(stage.replace("_", " "))
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    """Run a stage, print a table and merge the results into recipe_search.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--stage", type=int, choices=sorted(STAGES), default=1)
    args = parser.parse_args()
    consortia = CONSORTIA[args.stage]
    results = search(STAGES[args.stage], consortia, args.seeds)
    path = RESULTS / "recipe_search.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved[f"stage_{args.stage}"] = {"seeds": args.seeds, "target_epsilon": TARGET_EPSILON,
                                    "candidates": results}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(saved, indent=2))
    plot(saved, RESULTS / "recipe_search.png")
    print(f"| candidate | {' | '.join(consortia)} | mean |")
    print("|---|---|---|---|")
    for name, entry in sorted(results.items(), key=lambda kv: -kv[1]["mean_auc"]):
        cells = [f"{statistics.mean(entry['auc'][d]):.4f}" for d in consortia]
        print(f"| {name} | {' | '.join(cells)} | {entry['mean_auc']:.4f} |")


if __name__ == "__main__":
    main()
