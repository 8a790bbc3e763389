"""``fedrisk simulate``: a whole consortium on one machine, on Flower's simulation engine."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from flwr.clientapp import ClientApp

from fedrisk.config import RunConfig
from fedrisk.data import (
    Contract,
    DataError,
    check_table,
    embedded_banks,
    load_embedded,
    read_table,
    split_table,
    stratified_split,
    write_table,
)
from fedrisk.data.errors import first_problem
from fedrisk.errors import UserError
from fedrisk.files import ensure_private_dir, write_private_file
from fedrisk.models import ModelSpec
from fedrisk.privacy.policy import BankPolicy
from fedrisk.server.checkpoint import check_same_run, checkpoint_path, read_checkpoint
from fedrisk.server.secagg import MIN_SECAGG_BANKS, weight_bound
from fedrisk.simulations.baselines import (
    Split,
    centralized_references,
    local_only_auc,
    local_only_nonprivate_auc,
)
from fedrisk.simulations.engine import check_ray_cluster, run_flower_simulation

log = logging.getLogger("fedrisk")
REFUSALS_FILE = "refusals.json"  # written by the ServerApp when no bank accepted the run


class SimulationError(UserError, RuntimeError):
    """The simulated run produced no result; the message (one line) says why."""


@dataclass
class SimulationRequest:
    """What to simulate: which data and how to split it, plus run-config overrides.

    Attributes:
        dataset: an embedded dataset (``lending_club``, ``credit_data``), used when
            ``data`` is not given.
        data / contract: a user's pooled table and its contract, split into banks by
            ``split_by`` (a column) or into ``banks`` banks (seeded Dirichlet skew).
        overrides: run-config keys (as in pyproject ``[tool.flwr.app.config]``).
        baselines: also train the centralized and local-only reference models.
        bank_policy: a policy file applied to every bank (default: the simulation
            default policy, with the run's test fraction and seed as the banks' split).
        ray_address: ``HOST:PORT`` of an existing Ray cluster's head to run the banks on
            (default: a local Ray for this run only). Every node reads the banks' tables
            and writes their ledgers under ``output-dir``, so it must be storage shared at
            the same path; simulation puts every bank's rows on every node, so it is for
            public or synthetic data only.
        bank_app: the ClientApp the simulated banks run instead of fedrisk's own; for
            studies of misbehaving banks only (``benchmarks/poisoning.py``), never set by
            the CLI.
        resume: a run folder whose checkpointed run to continue at its next round, with
            the same banks (its ``data`` folder) and config; ``overrides`` may only repeat
            the run's own values.

    """

    dataset: str = "lending_club"
    data: Path | None = None
    contract: Path | None = None
    split_by: str | None = None
    banks: int | None = None
    overrides: dict = field(default_factory=dict)
    baselines: bool = False
    verbose: bool = False
    bank_policy: Path | None = None
    ray_address: str | None = None
    bank_app: ClientApp | None = None
    resume: Path | None = None


def simulate(request: SimulationRequest) -> dict:
    """Run the simulation and return metrics.json's content (also written to output-dir).

    Raises :class:`fedrisk.config.ConfigError` or :class:`fedrisk.data.DataError`
    with a one-line message for bad input, before anything starts; with ``resume``,
    :class:`~fedrisk.server.checkpoint.CheckpointError` for a missing or damaged
    checkpoint or a changed config, and :class:`SimulationError` for a finished run.
    """
    if request.resume is not None:
        return _resume(request)
    config = RunConfig.from_run_config({"dataset": request.dataset, **request.overrides})
    if request.ray_address:
        check_ray_cluster(request.ray_address)
    output_dir = Path(config.output_dir).resolve()
    banks, contract = _bank_tables(request, config.seed)
    policy = (BankPolicy.load(request.bank_policy) if request.bank_policy
              else BankPolicy.simulation_default(config.seed, config.test_fraction))
    data_dir = _materialize(banks, contract, policy, output_dir / "data")
    overrides = {"output-dir": str(output_dir), "data-dir": str(data_dir),
                 "min-banks": len(banks)}
    if not config.bank_state_dir:
        overrides["bank-state-dir"] = str(output_dir / "banks")
    if not config.ledger_heads_file:
        overrides["ledger-heads-file"] = str(output_dir / "ledger-heads.json")
    if config.secure_aggregation and not config.secagg_max_weight:
        overrides["secagg-max-weight"] = weight_bound(_largest_published_size(banks, policy))
    if "target-delta" not in request.overrides and policy.require_delta_below_1_over_n:
        overrides["target-delta"] = delta_below_one_over_n(
            max(len(t) for t in banks.values()), config.target_delta)
    config = RunConfig.from_run_config({**config.to_run_config(), **overrides})
    _check_secure_aggregation(config, banks, policy)
    log.info("simulating %d banks: %s", len(banks), ", ".join(banks))
    checkpoint_path(output_dir).unlink(missing_ok=True)  # a fresh run starts from round 1
    return _run(config, banks, contract, policy, request)


def _resume(request: SimulationRequest) -> dict:
    """Continue the run checkpointed in ``request.resume`` on its own banks and config."""
    output_dir = Path(request.resume).resolve()
    checkpoint = read_checkpoint(output_dir)
    if checkpoint.round >= checkpoint.num_rounds and (output_dir / "metrics.json").is_file():
        raise SimulationError(f"{output_dir}: the run finished all {checkpoint.num_rounds} "
                              "rounds; there is nothing to resume")
    if request.data is not None or request.contract is not None or request.bank_policy:
        raise DataError("--resume continues on the run's own bank tables and policies "
                        f"({checkpoint.config['data-dir']}); drop --data, --contract and "
                        "--bank-policy")
    config = RunConfig.from_run_config({**checkpoint.config, "run-id": checkpoint.run_id,
                                        "resume": True})
    given = RunConfig.from_run_config({**checkpoint.config, **request.overrides,
                                       "run-id": checkpoint.run_id, "resume": True})
    check_same_run(checkpoint, given, checkpoint.run_id, output_dir)
    banks, contract, policy = read_materialized(Path(config.data_dir))
    log.info("resuming run %s after round %d of %d", checkpoint.run_id, checkpoint.round,
             checkpoint.num_rounds)
    return _run(config, banks, contract, policy, request)


def _run(config: RunConfig, banks: dict[str, pd.DataFrame], contract: Contract,
         policy: BankPolicy, request: SimulationRequest) -> dict:
    """Run the configured simulation of ``banks``; read (and complete) its metrics.json."""
    output_dir = Path(config.output_dir)
    metrics_path = output_dir / "metrics.json"
    for stale in (metrics_path, output_dir / REFUSALS_FILE):
        stale.unlink(missing_ok=True)
    try:
        run_flower_simulation(config.to_run_config(), len(banks), output_dir / "app",
                              verbose=request.verbose, ray_address=request.ray_address,
                              bank_app=request.bank_app)
    except Exception:
        if not (output_dir / REFUSALS_FILE).is_file():
            raise
    metrics = _read_metrics(output_dir)
    if request.baselines:
        _add_baselines(metrics, banks, contract, policy, config)
        metrics_path.write_text(json.dumps(metrics, indent=2))
    return metrics


def read_materialized(data_dir: Path) -> tuple[dict[str, pd.DataFrame], Contract, BankPolicy]:
    """The banks' tables, contract and policy as :func:`_materialize` wrote them."""
    manifest_path = data_dir / "banks.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        contract = Contract.load(data_dir / manifest["contract"])
        banks = {entry["id"]: read_table(data_dir / entry["file"])
                 for entry in manifest["banks"]}
        policy = BankPolicy.load(data_dir / manifest["banks"][0]["policy"])
    except (OSError, KeyError, IndexError, ValueError, UserError) as error:
        raise SimulationError(f"{manifest_path}: cannot read the run's bank tables "
                              f"({error})") from None
    return banks, contract, policy


def _read_metrics(output_dir: Path) -> dict:
    """metrics.json of the finished run, or a one-line :class:`SimulationError` saying why not."""
    refusals = output_dir / REFUSALS_FILE
    if refusals.is_file():
        refused = json.loads(refusals.read_text())
        summary = refused.get("summary", "no bank accepted the run")
        raise SimulationError(f"{summary}: {'; '.join(refused['answers'])}")
    path = output_dir / "metrics.json"
    if not path.is_file():
        raise SimulationError(f"the run failed before writing {path} (rerun with --verbose "
                              "for Flower's log)")
    return json.loads(path.read_text())


def _bank_tables(request: SimulationRequest, seed: int) -> tuple[dict[str, pd.DataFrame], Contract]:
    if request.data is None:
        _, contract = load_embedded(request.dataset)
        return embedded_banks(request.dataset, seed=seed), contract
    if request.contract is None:
        raise DataError("--data needs --contract FILE (draft one with `fedrisk data contract`)")
    if (request.split_by is None) == (request.banks is None):
        raise DataError("--data needs exactly one of --split-by COLUMN or --banks N")
    contract = Contract.load(request.contract)
    table = read_table(request.data)
    _require_passing(table, contract, str(request.data))
    banks = split_table(table, by=request.split_by, n_banks=request.banks, contract=contract,
                        seed=seed)
    if len(banks) < 2:
        raise DataError(f"{request.data}: splitting gave {len(banks)} bank; need at least 2")
    for bank_id, rows in banks.items():
        _require_passing(rows, contract, f"{request.data} (bank '{bank_id}')")
    return banks, contract


def _require_passing(table: pd.DataFrame, contract: Contract, source: str) -> None:
    """The banks' own pre-flight check, here before anything starts: its first error, one line.

    Each simulated bank would refuse such a table at its first message anyway; checking
    here says why with the values, in seconds, instead of after starting every bank.
    """
    report = check_table(table, contract, source)
    if not report.ok:
        raise DataError(first_problem(report.errors))


def _materialize(banks: dict[str, pd.DataFrame], contract: Contract, policy: BankPolicy,
                 data_dir: Path) -> Path:
    """Write each bank's file and policy, and the manifest simulated nodes read by partition id.

    The banks' rows and the manifest are private files (0600, in a 0700 folder).
    """
    ensure_private_dir(data_dir)
    contract.save(data_dir / "contract.toml")
    entries = []
    for bank_id, table in banks.items():
        write_table(table, data_dir / f"{bank_id}.csv", exact=True)  # the bank reads it back
        policy.save(data_dir / "policies" / f"{bank_id}.toml")
        entries.append({"id": bank_id, "file": f"{bank_id}.csv", "rows": len(table),
                        "policy": f"policies/{bank_id}.toml"})
    manifest = {"contract": "contract.toml", "banks": entries}
    write_private_file(data_dir / "banks.json", json.dumps(manifest, indent=2).encode())
    return data_dir


def delta_below_one_over_n(largest_rows: int, default: float) -> float:
    """``default`` if below 1/n of the largest bank, else the largest power of ten below it.

    Banks whose policy requires δ < 1/n refuse a run whose δ is not (a δ of 1/n lets a
    mechanism publish one record outright). A simulation without ``--target-delta``
    therefore follows the data: 1e-5 up to 99,999 rows per bank, 1e-6 up to 999,999, ...
    """
    if default < 1 / largest_rows:
        return default
    return 10.0 ** -(math.floor(math.log10(largest_rows)) + 1)


def _largest_published_size(banks: dict[str, pd.DataFrame], policy: BankPolicy) -> float:
    """An upper bound of the train size any bank will publish (its noisy size under DP).

    A bank keeping its size private publishes ``n + N(0, σ²)``: 6σ above n bounds it
    (exceeded with probability 1e-9).
    """
    largest = max(round(len(t) * (1 - policy.test_fraction)) + 1 for t in banks.values())
    noise = policy.size_noise_multiplier if policy.size_disclosure == "dp" else 0.0
    return largest + 6 * noise


def _check_secure_aggregation(config: RunConfig, banks: dict[str, pd.DataFrame],
                              policy: BankPolicy) -> None:
    if not config.secure_aggregation:
        return
    if len(banks) < MIN_SECAGG_BANKS:
        raise DataError(f"secure aggregation needs at least {MIN_SECAGG_BANKS} banks (with 2, "
                        "the sum reveals the other bank's update); use --no-secure-aggregation")
    largest = _largest_published_size(banks, policy)
    if largest > config.secagg_max_weight:
        raise DataError(f"secagg-max-weight {config.secagg_max_weight:g} is below the largest "
                        f"bank's published train size (up to {largest:.0f}); raise it with "
                        f"--run-config secagg-max-weight=N, or set 0 to follow the data")


def bank_splits(banks: dict[str, pd.DataFrame], contract: Contract, policy: BankPolicy
                ) -> dict[str, Split]:
    """Each bank's encoded train/test split, exactly as its client makes it (policy's split)."""
    splits = {}
    for bank_id, table in banks.items():
        train, test = stratified_split(table, contract, policy.test_fraction, policy.split_seed)
        splits[bank_id] = (contract.encode(train), contract.labels(train),
                           contract.encode(test), contract.labels(test),
                           contract.grades(train) if contract.grade else None)
    return splits


def _add_baselines(metrics: dict, banks: dict[str, pd.DataFrame], contract: Contract,
                   policy: BankPolicy, config: RunConfig) -> None:
    log.info("training baselines: centralized non-private (fedrisk model, logistic, GBDT), "
             "local-only per bank (DP and non-private logistic)")
    splits = bank_splits(banks, contract, policy)
    spec = ModelSpec(config.model, contract.n_features, config.hidden_layers,
                     contract.prior_default_rate,
                     len(contract.grade_levels) if contract.grade else 0)
    local = {bank_id: local_only_auc(split, spec, config) for bank_id, split in splits.items()}
    alone = {bank_id: local_only_nonprivate_auc(split, config.seed)
             for bank_id, split in splits.items()}
    for bank in metrics["banks"]:
        bank["local_only_auc"] = local.get(bank["id"])
        bank["local_only_nonprivate_auc"] = alone.get(bank["id"])
    metrics["baselines"] = {
        **centralized_references(splits, spec, config),
        "local_only_auc_mean": sum(local.values()) / len(local),
        "local_only_private": config.dp,
        "local_only_nonprivate_auc_mean": sum(alone.values()) / len(alone),
    }
