"""Power of the one-run canary audit: its white-box ε lower bound against the claimed ε.

Each lending_club bank of the default run (five census-region banks, the bank's own
training split), its mechanism exactly as the default run plans it (the defaults' rounds,
local epochs, batch size and clipping bound, σ planned for the target ε over the rounds
and any personalization epochs, δ = 1e-5), replayed by
:func:`fedrisk.audit.canary_run.white_box_audit` with the audit's default canaries, as
``fedrisk audit report`` runs it at each bank. The claim is the global model's ε (Opacus
PRV over the replayed rounds), as the audit's.

- ε = 3: ``--repeats`` repetitions at each bank (fresh noise, sampling and canaries):
  min / median / max of the bound, and how often it exceeds the claim (never, for a
  correct mechanism, except with probability at most 5% per audit);
- ε = 1, 3, 8 (first repetitions): bound / claim / ratio per bank;
- the non-private run (``--no-dp``: the same rounds without clipping or noise): its bound
  (no claim), and the black-box bound beside the white-box one at ε = 3.

Writes benchmarks/results/canary_audit.{json,png}.

    python benchmarks/canary_audit.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedrisk.audit.canary_run import (  # noqa: E402
    DEFAULT_CANARIES,
    ShadowRun,
    black_box_audit,
    white_box_audit,
)
from fedrisk.audit.trainer import TrainPlan, bank_training_path  # noqa: E402
from fedrisk.config import RunConfig  # noqa: E402
from fedrisk.data import embedded_banks, load_embedded, stratified_split  # noqa: E402
from fedrisk.models import ModelSpec  # noqa: E402
from fedrisk.privacy.accounting import DPSchedule, plan_schedule  # noqa: E402

RESULTS = Path(__file__).parent / "results"
EPSILONS = (1.0, 3.0, 8.0)


def bank_rows(dataset: str = "lending_club") -> dict[str, tuple[np.ndarray, ...]]:
    """Each bank's encoded training split (the default run's split: 20%, seed 0)."""
    contract = load_embedded(dataset)[1]
    rows = {}
    for bank, table in embedded_banks(dataset).items():
        train, _ = stratified_split(table, contract, 0.2, 0)
        rows[bank] = (contract.encode(train), contract.labels(train), contract.grades(train))
    return rows


def shadow_for(n: int, epsilon: float | None, config: RunConfig, spec: ModelSpec) -> ShadowRun:
    """The default run's mechanism at one bank of ``n`` rows (None: the non-private run)."""
    rounds, epochs, batch = config.num_server_rounds, config.local_epochs, config.batch_size
    if epsilon is None:
        plan = TrainPlan(epochs, batch, config.learning_rate_no_dp, config.momentum,
                         config.max_grad_norm, config.max_steps_per_epoch)
        return ShadowRun(spec, config.seed, plan, None, rounds, config.target_delta)
    schedule = plan_schedule(n, batch, epochs, rounds, epsilon, config.target_delta,
                             personalization_epochs=config.fine_tuning_epochs,
                             max_steps_per_epoch=config.max_steps_per_epoch)
    phase = DPSchedule(schedule.sample_rate, schedule.steps_per_round,
                       schedule.noise_multiplier)
    plan = TrainPlan(epochs, batch, config.learning_rate, config.momentum, config.max_grad_norm,
                     config.max_steps_per_epoch)
    return ShadowRun(spec, config.seed, plan, (phase,) * rounds, rounds, config.target_delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--canaries", type=int, default=DEFAULT_CANARIES)
    args = parser.parse_args()
    config, contract = RunConfig(), load_embedded("lending_club")[1]
    spec = ModelSpec("mlp", contract.n_features, (64,), contract.prior_default_rate,
                     len(contract.grade_levels))
    train = bank_training_path()
    started = time.monotonic()
    results: dict = {"canaries": args.canaries, "repeats": args.repeats, "banks": {}}
    for bank, (x, y, g) in bank_rows().items():
        row: dict = {"n_train": len(y), "epsilons": {}}
        for epsilon in EPSILONS:
            shadow = shadow_for(len(y), epsilon, config, spec)
            repeats = args.repeats if epsilon == 3.0 else 1
            bounds = [white_box_audit(train, shadow, x, y, g, args.canaries)
                      for _ in range(repeats)]
            claim = shadow.epsilon(len(y))
            values = [b["epsilon_lower_bound"] for b in bounds]
            row["epsilons"][str(epsilon)] = {
                "target": epsilon, "claim": claim, "sigma": shadow.noise_multiplier,
                "bounds": values, "min": min(values), "median": statistics.median(values),
                "max": max(values), "above_claim": sum(v > claim for v in values),
                "guesses": bounds[0]["guesses"], "correct": bounds[0]["correct"],
                "steps": bounds[0]["steps"]}
            if epsilon == 3.0:
                black = black_box_audit(train, shadow, x, y, g)
                row["black_box_eps3"] = {"bound": black["epsilon_lower_bound"],
                                         "claim": black["epsilon_claim"]}
            print(f"{bank:<15} ε={epsilon:g}  claim {claim:.3f}  bound min/median/max "
                  f"{min(values):.3f}/{statistics.median(values):.3f}/{max(values):.3f}",
                  flush=True)
        nodp = white_box_audit(train, shadow_for(len(y), None, config, spec), x, y, g,
                               args.canaries)
        row["non_private"] = {"bound": nodp["epsilon_lower_bound"], "guesses": nodp["guesses"],
                              "correct": nodp["correct"]}
        results["banks"][bank] = row
    results["seconds"] = round(time.monotonic() - started, 1)
    report(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "canary_audit.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "canary_audit.png")
    print(f"wrote {RESULTS / 'canary_audit.json'}, {RESULTS / 'canary_audit.png'} "
          f"({results['seconds']} s)")


def report(results: dict) -> None:
    """Print the spread at ε = 3 and the bound / claim / ratio table."""
    print(f"\n{results['repeats']} repetitions at ε = 3 (white-box, {results['canaries']} "
          "canaries, 95%):")
    print(f"{'bank':<15} {'claim':>6} {'min':>6} {'median':>7} {'max':>6} {'> claim':>8}")
    for bank, row in results["banks"].items():
        e = row["epsilons"]["3.0"]
        print(f"{bank:<15} {e['claim']:6.3f} {e['min']:6.3f} {e['median']:7.3f} "
              f"{e['max']:6.3f} {e['above_claim']:>8}")
    print(f"\n{'bank':<15}" + "".join(f"  ε={t:g}: bound / claim (ratio)" for t in EPSILONS)
          + "  no DP: bound  black-box ε=3")
    for bank, row in results["banks"].items():
        cells = "".join(_cell(row["epsilons"][str(t)]) for t in EPSILONS)
        print(f"{bank:<15}{cells}  {row['non_private']['bound']:.2f}"
              f"  {row['black_box_eps3']['bound']:.2f}")


def _cell(entry: dict) -> str:
    bound, claim = entry["bounds"][0], entry["claim"]
    return f"  {bound:.2f} / {claim:.2f} ({bound / claim:.2f})".ljust(30)


def plot(results: dict, path: Path) -> None:
    """Bound against claim at ε = 1, 3, 8 (the 20-repetition spread at 3), non-private bound."""
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for bank, row in results["banks"].items():
        claims = [row["epsilons"][str(t)]["claim"] for t in EPSILONS]
        firsts = [row["epsilons"][str(t)]["bounds"][0] for t in EPSILONS]
        line, = axis.plot(claims, firsts, "o-", label=bank)
        spread = row["epsilons"]["3.0"]
        axis.errorbar([spread["claim"]], [spread["median"]],
                      yerr=[[spread["median"] - spread["min"]], [spread["max"] - spread["median"]]],
                      fmt="none", color=line.get_color(), capsize=3)
        axis.axhline(row["non_private"]["bound"], color=line.get_color(), ls=":", lw=0.8)
    top = max(r["epsilons"]["8.0"]["claim"] for r in results["banks"].values())
    axis.plot([0, top], [0, top], "--", color="grey", label="bound = claim")
    axis.set(xlabel="claimed ε (global model, PRV)", ylabel="white-box canary bound (95%)",
             title="one-run canary audit (dotted: the non-private run's bound)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
