"""The ``fedrisk`` command: parses, delegates, prints. No logic lives here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedrisk.errors import UserError

if TYPE_CHECKING:
    from fedrisk.privacy.chain import TrustedKeys

app = typer.Typer(help="Privacy-preserving federated credit-risk modeling.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Data contracts: draft, check, split and synthesize bank tables.",
                       no_args_is_help=True)
audit_app = typer.Typer(help="Verify ledgers and audit finished runs.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(audit_app, name="audit")
# Piped output gets 100 columns, so that the per-bank table is not truncated.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 100)
SUMMARY_ABOVE = 20  # more banks than this: quantiles and the worst banks, not every row
WORST_BANKS = 5
errors = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def simulate(
    dataset: Annotated[str | None, typer.Option(
        help="Embedded dataset: lending_club (default) or credit_data.")] = None,
    data: Annotated[Path | None, typer.Option(help="Your pooled table (CSV/Parquet).")] = None,
    contract: Annotated[Path | None, typer.Option(help="Contract of --data.")] = None,
    split_by: Annotated[str | None, typer.Option(help="Split --data into banks by column.")]
    = None,
    banks: Annotated[int | None, typer.Option(help="Split --data into N banks (Dirichlet).")]
    = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round.")] = None,
    target_epsilon: Annotated[float | None, typer.Option(help="Per-bank ε budget.")] = None,
    target_delta: Annotated[float | None, typer.Option(help="Per-bank δ.")] = None,
    dp: Annotated[bool | None, typer.Option(
        "--dp/--no-dp", help="DP-SGD (default); --no-dp is a labelled non-private baseline.")]
    = None,
    secure_aggregation: Annotated[bool | None, typer.Option(
        "--secure-aggregation/--no-secure-aggregation", help="Flower SecAgg+.")] = None,
    dp_level: Annotated[str | None, typer.Option(
        help="record (DP-SGD at each bank), institution (Flower's client-side clipping at each "
             "bank, noise on the aggregate by the coordinator) or both.")] = None,
    model: Annotated[str | None, typer.Option(help="mlp or logistic.")] = None,
    strategy: Annotated[str | None, typer.Option(
        help="fedavg, fedprox, fedadam; without secure aggregation also fedmedian, "
             "fedtrimmedavg.")] = None,
    privacy_budget_scope: Annotated[str | None, typer.Option(
        help="run: budget per run; dataset: lifetime budget on this data.")] = None,
    personalization: Annotated[str | None, typer.Option(
        help="finetune: bank-local DP fine-tuning after the last round; none.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of splits, init and sampling.")] = None,
    output_dir: Annotated[Path | None, typer.Option(
        help="Where metrics.json and the model go (default runs/latest).")] = None,
    run_config: Annotated[str | None, typer.Option(
        help='Other run-config keys, e.g. "batch-size=128 learning-rate=0.05".')] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue the run checkpointed in this run folder at its next round (same "
             "banks and config).")] = None,
    baselines: Annotated[bool, typer.Option(
        help="Also train centralized and local-only baselines on the same splits.")] = False,
    bank_policy: Annotated[Path | None, typer.Option(
        help="A bank privacy policy (TOML) applied to every simulated bank.")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="HOST:PORT of an existing Ray cluster to run the banks on (default: a local "
             "Ray for this run); see the README.")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower and Ray logs.")] = False,
    show_banks: Annotated[bool, typer.Option(
        help=f"Print every bank's row (above {SUMMARY_ABOVE} banks: quantiles and the worst "
             "banks).")] = False,
) -> None:
    """Simulate a consortium of banks training a default model with DP on one machine."""
    from fedrisk.simulations import SimulationRequest
    from fedrisk.simulations import simulate as run_simulation

    overrides = _parse_run_config(run_config)
    if resume is not None:  # given options must repeat the checkpointed run's own values
        output_dir = output_dir or resume
        flags = {"dataset": dataset, "output-dir": str(output_dir.resolve())}
    else:
        output_dir = output_dir or Path("runs/latest")
        flags = {"output-dir": str(output_dir)}
    flags |= {"num-server-rounds": rounds, "local-epochs": local_epochs,
              "target-epsilon": target_epsilon, "target-delta": target_delta, "dp": dp,
              "secure-aggregation": secure_aggregation, "model": model, "strategy": strategy,
              "privacy-budget-scope": privacy_budget_scope, "personalization": personalization,
              "dp-level": dp_level, "seed": seed}
    overrides |= {k: v for k, v in flags.items() if v is not None}
    _show_progress(verbose)
    metrics = run_simulation(SimulationRequest(dataset or "lending_club", data, contract,
                                               split_by, banks, overrides, baselines, verbose,
                                               bank_policy, ray_address, resume=resume))
    _print_summary(metrics, output_dir, show_banks)


@app.command()
def score(
    model: Annotated[Path, typer.Option(help="Run directory (fedrisk simulate --output-dir).")],
    data: Annotated[Path, typer.Option(help="Applicants table (CSV/Parquet, the run's contract; "
                                            "target optional).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Scores file (CSV/Parquet).")]
    = Path("scores.csv"),
    calibration_data: Annotated[Path | None, typer.Option(
        help="The bank's own table (calibrate PDs on its held-out split) or a calibrator .json."
    )] = None,
    calibration_method: Annotated[str, typer.Option(help="platt or isotonic.")] = "platt",
    lgd: Annotated[float, typer.Option(help="Loss given default (0 to 1).")] = 0.45,
    reasons: Annotated[bool, typer.Option("--reasons/--no-reasons",
                                          help="Top three reasons per applicant.")] = True,
    bank_policy: Annotated[Path | None, typer.Option(
        help="Your bank policy: its split-seed locates your held-out split for calibration.")]
    = None,
) -> None:
    """Score applicants: PD, risk band, grade, expected loss and reasons; bad rows to rejects."""
    from fedrisk.risk import score_applicants

    result = score_applicants(model, data, output, calibration_data=calibration_data,
                              calibration_method=calibration_method, lgd=lgd,
                              with_reasons=reasons, seed=_split_seed(bank_policy))
    console.print(f"scored {result.n_scored:,} of {result.n_applicants:,} applicants "
                  f"({result.calibration} PD) -> {result.output_path}", highlight=False)
    console.print(f"rejected {result.n_rejected:,}, each with its reason -> "
                  f"{result.rejects_path}", highlight=False)
    if result.calibrator_path is not None:
        console.print(f"calibrator ({result.calibration}, JSON) -> {result.calibrator_path}",
                      highlight=False)
    bands = result.scores["risk_band"].value_counts().sort_index()
    console.print("risk bands: " + ", ".join(f"{band} {n:,}" for band, n in bands.items()),
                  highlight=False)
    if "expected_loss" in result.scores:
        console.print(f"expected loss (LGD {lgd:g}): {result.scores['expected_loss'].sum():,.0f}",
                      highlight=False)
    if result.warnings:
        console.print(f"[yellow]{len(result.warnings)} warnings[/yellow] (values the contract "
                      f"repairs), first: {result.warnings[0]}", highlight=False)


@app.command()
def portfolio(
    model: Annotated[Path, typer.Option(help="Run directory (fedrisk simulate --output-dir).")],
    data: Annotated[Path, typer.Option(help="The bank's loan book (CSV/Parquet, the run's "
                                            "contract).")],
    scenarios: Annotated[int, typer.Option(help="Monte Carlo scenarios.")] = 1_000_000,
    asset_correlation: Annotated[float | None, typer.Option(
        help="One asset correlation for every loan (default: Basel II retail rho(PD)).")] = None,
    lgd: Annotated[float, typer.Option(help="Loss given default (0 to 1).")] = 0.45,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 0,
    calibration_data: Annotated[Path | None, typer.Option(
        help="The bank's own table (calibrate PDs on its held-out split) or a calibrator .json."
    )] = None,
    workers: Annotated[int, typer.Option(help="Simulation threads (same result for any).")] = 1,
    bank_policy: Annotated[Path | None, typer.Option(
        help="Your bank policy: its split-seed locates your held-out split for calibration.")]
    = None,
    output_dir: Annotated[Path, typer.Option(
        "-o", "--output-dir", help="Where portfolio.json, loss_distribution.png and "
        "contributions.csv go.")] = Path("portfolio"),
) -> None:
    """Simulate the loss distribution of a loan book: EL, VaR, expected shortfall."""
    from fedrisk.risk import portfolio_loss

    result = portfolio_loss(model, data, scenarios=scenarios, asset_correlation=asset_correlation,
                            lgd=lgd, seed=seed, output_dir=output_dir,
                            calibration_data=calibration_data, workers=workers,
                            split_seed=_split_seed(bank_policy))
    correlation = ("Basel II retail rho(PD)" if asset_correlation is None
                   else f"{asset_correlation:g}")
    console.print(f"{result.n_loans:,} loans, exposure {result.total_exposure:,.0f}, LGD "
                  f"{lgd:g}, {result.calibration} PD, asset correlation {correlation}; "
                  f"{result.scenarios:,} scenarios in {result.seconds:.1f}s", highlight=False)
    table = Table(title=f"portfolio loss (expected loss {result.expected_loss:,.0f})")
    for column in ("level", "VaR", "expected shortfall"):
        table.add_column(column, justify="right")
    for level, var in result.value_at_risk.items():
        table.add_row(f"{level:.1%}", f"{var:,.0f}", f"{result.expected_shortfall[level]:,.0f}")
    console.print(table)
    top = result.contributions.iloc[0]
    console.print(f"largest contributor to ES {result.contribution_level:.0%}: row "
                  f"{int(top['row'])} (PD {top['pd']:.3f}, exposure {top['exposure']:,.0f}), "
                  f"{top['es_share']:.2%} of it", highlight=False)
    console.print(f"wrote {result.summary_path}, {result.histogram_path}, "
                  f"{result.contributions_path}", highlight=False)


consortium_app = typer.Typer(help="Deploy a consortium: keys, TLS, proxy, one SuperNode per bank.",
                              no_args_is_help=True)
app.add_typer(consortium_app, name="consortium")


@consortium_app.command("init")
def consortium_init(
    directory: Annotated[Path, typer.Argument(help="Consortium directory to create.")],
    banks: Annotated[str, typer.Option(
        help="Comma-separated bank ids for the one-machine demo, e.g. bank-a,bank-b "
             "(default: the coordinator's side only; banks join with bank-init + register).")]
    = "",
    coordinator_host: Annotated[str, typer.Option(help="Host name or IP the banks dial.")]
    = "127.0.0.1",
    data: Annotated[list[str] | None, typer.Option(
        help="BANK=PATH, repeatable, read in place (default: each bank gets an embedded "
             "lending_club region in its folder).")]
    = None,
    contract: Annotated[Path | None, typer.Option(help="Contract of --data.")] = None,
    base_port: Annotated[int, typer.Option(
        help="Fleet port banks dial; the SuperLink takes base-port+1 on 127.0.0.1, demo bank i "
             "base-port+2+i.")] = 9300,
    force: Annotated[bool, typer.Option(help="Replace existing keys.")] = False,
) -> None:
    """Provision a consortium: CA, SuperLink TLS, proxy; with --banks the one-machine demo."""
    from fedrisk.consortium import init_consortium

    bank_ids = [b.strip() for b in banks.split(",") if b.strip()]
    provisioned = init_consortium(directory, bank_ids, coordinator_host, _parse_bank_paths(data),
                                  contract, force, base_port)
    root = provisioned.layout.root
    if bank_ids:
        console.print(f"one machine: fedrisk consortium up {root} && fedrisk consortium run "
                      f"{root} --rounds 2", markup=False, highlight=False, soft_wrap=True)
        console.print("separate hosts, each party on its own (the bank steps already ran here "
                      "for the demo):", highlight=False)
    else:
        console.print("next, on each bank's host: fedrisk consortium bank-init, then here: "
                      "fedrisk consortium register", highlight=False)
    for step in provisioned.walkthrough:
        console.print(f"[bold]{step.party}[/bold]")
        for line in step.lines:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


@consortium_app.command("bank-init")
def consortium_bank_init(
    bank_dir: Annotated[Path, typer.Argument(help="The bank's folder to create (on its host).")],
    bank_id: Annotated[str, typer.Option(help="The bank's id in the consortium.")],
    data: Annotated[Path, typer.Option(help="The bank's own table (read in place).")],
    contract: Annotated[Path, typer.Option(help="The contract the consortium agreed on.")],
    fleet_address: Annotated[str, typer.Option(help="HOST:PORT the coordinator gave you.")],
    ca: Annotated[Path, typer.Option(help="The consortium CA certificate the coordinator gave "
                                          "you.")],
    runtime_port: Annotated[int, typer.Option(
        help="Port of the SuperNode's Runtime API on this host's 127.0.0.1.")] = 9094,
    force: Annotated[bool, typer.Option(help="Make new keys (a signing key with a ledger is "
                                             "kept).")] = False,
) -> None:
    """On the bank's host: make its own keys and policy, check its table, write its bundle."""
    from fedrisk.consortium import bank_init, join_command

    paths = bank_init(bank_dir, bank_id, data, contract, fleet_address, ca, runtime_port, force)
    console.print(f"bank '{bank_id}': keys made in {paths.root / 'keys'} (0600, never leave "
                  f"this host), policy {paths.policy}", highlight=False)
    console.print(f"send {paths.public_bundle} to the coordinator (public keys only)",
                  highlight=False)
    console.print("once registered, join from inside the folder:", highlight=False)
    console.print(f"  cd {paths.root} && umask 077", markup=False, highlight=False)
    console.print(f"  {join_command(paths)}", markup=False, highlight=False, soft_wrap=True)


@consortium_app.command("register")
def consortium_register(
    directory: Annotated[Path, typer.Argument(help="The consortium directory.")],
    bundle: Annotated[Path, typer.Argument(help="A bank's public-bundle.json.")],
    replace: Annotated[bool, typer.Option(help="Accept new keys for a registered bank.")]
    = False,
) -> None:
    """On the coordinator's host: register a bank from its public bundle."""
    from fedrisk.consortium import register_bundle

    registration = register_bundle(directory, bundle, replace)
    line = f"registered bank '{registration.bank}'"
    if registration.node_id is None:
        line += " (the SuperLink is not running: `consortium up` registers its node key)"
    else:
        line += f" with the running SuperLink as node {registration.node_id}"
    console.print(line, highlight=False)


@consortium_app.command("up")
def consortium_up_command(
    directory: Path,
    clientapp: Annotated[str, typer.Option(
        help="How each bank's executor runs a message (only approved app bundles): fork: "
             "forked from a process with torch loaded; spawn: a fresh interpreter.")] = "fork",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every party.")] = 120.0,
    coordinator_only: Annotated[bool, typer.Option(
        help="Start the SuperLink and the proxy only (the banks run on their own hosts).")]
    = False,
) -> None:
    """Start the SuperLink, the bank-facing proxy and one SuperNode per bank (loopback)."""
    from fedrisk.consortium import consortium_up

    for record in consortium_up(directory, clientapp=clientapp, timeout=timeout,
                                coordinator_only=coordinator_only):
        console.print(f"{record.name}: pid {record.pid}, log {record.log}", highlight=False)


@consortium_app.command("run")
def consortium_run_command(
    directory: Path,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round.")] = None,
    target_epsilon: Annotated[float | None, typer.Option(help="Per-bank ε budget.")] = None,
    dp: Annotated[bool | None, typer.Option(
        "--dp/--no-dp", help="DP-SGD (default); --no-dp is a labelled non-private baseline.")]
    = None,
    secure_aggregation: Annotated[bool | None, typer.Option(
        "--secure-aggregation/--no-secure-aggregation", help="Flower SecAgg+.")] = None,
    run_config: Annotated[str | None, typer.Option(
        help='Other run-config keys, e.g. "batch-size=128 learning-rate=0.05".')] = None,
    name: Annotated[str | None, typer.Option(
        help="Run folder under DIR/coordinator/runs (default: a timestamp).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before the run is stopped.")] = 3600.0,
    resume: Annotated[str | None, typer.Option(
        help="Continue this run (its folder name under DIR/coordinator/runs) at the round "
             "after its checkpoint, with the same config.")] = None,
    show_banks: Annotated[bool, typer.Option(
        help=f"Print every bank's row (above {SUMMARY_ABOVE} banks: quantiles and the worst "
             "banks).")] = False,
) -> None:
    """Submit a training run with `flwr run`, stream it, and fail unless it completed."""
    from fedrisk.consortium import consortium_run

    overrides = _parse_run_config(run_config)
    flags = {"num-server-rounds": rounds, "local-epochs": local_epochs,
             "target-epsilon": target_epsilon, "dp": dp,
             "secure-aggregation": secure_aggregation}
    overrides |= {k: v for k, v in flags.items() if v is not None}
    metrics = consortium_run(directory, overrides, name=name, timeout=timeout,
                             echo=lambda line: console.print(line, markup=False,
                                                             highlight=False),
                             resume=resume)
    _print_summary(metrics, Path(metrics["config"]["output-dir"]), show_banks)


@consortium_app.command("approve")
def consortium_approve_command(
    bank_dir: Annotated[Path, typer.Argument(help="The bank's folder (its bank-policy.toml).")],
    app_dir: Annotated[Path | None, typer.Option(
        help="A Flower app the bank reviewed: its bundle is built here and hashed.")] = None,
    fab_hash: Annotated[str | None, typer.Option(
        help="Or the SHA-256 of the app bundle, built and hashed by the bank.")] = None,
) -> None:
    """Approve an app bundle at a bank: its executor will run that app's ClientApp."""
    from fedrisk.consortium import approve_app
    from fedrisk.consortium.approve import bank_policy_path

    digest = approve_app(bank_dir, app_dir, fab_hash)
    console.print(f"approved app bundle {digest} in {bank_policy_path(bank_dir)}",
                  highlight=False)


@consortium_app.command("down")
def consortium_down_command(
    directory: Path,
    timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL.")] = 15.0,
) -> None:
    """Stop every process `consortium up` started, by pid (SIGTERM, then SIGKILL)."""
    from fedrisk.consortium import consortium_down

    names = consortium_down(directory, timeout)
    console.print(f"stopped {len(names)} processes: {', '.join(names) or 'none were running'}",
                  highlight=False)


def _split_seed(bank_policy: Path | None) -> int | None:
    """The held-out split seed of a bank's policy (None: the run's seed, as in a simulation)."""
    if bank_policy is None:
        return None
    from fedrisk.privacy.policy import BankPolicy

    return BankPolicy.load(bank_policy).split_seed


def _parse_bank_paths(items: list[str] | None) -> dict[str, Path] | None:
    from fedrisk.config import ConfigError

    if not items:
        return None
    pairs = {}
    for item in items:
        bank, sep, path = item.partition("=")
        if not sep or not bank or not path:
            raise ConfigError(f"--data item '{item}' is not BANK=PATH")
        pairs[bank.strip()] = Path(path)
    return pairs


@data_app.command("contract")
def data_contract(
    table: Path,
    target: Annotated[str, typer.Option(help="Target column.")],
    positive: Annotated[str, typer.Option(help="Label of default in the target column.")],
    protected: Annotated[str, typer.Option(help="Comma-separated protected columns.")] = "",
    output: Annotated[Path, typer.Option("-o", "--output", help="Contract TOML to write.")]
    = Path("contract.toml"),
) -> None:
    """Draft a contract from one bank's table (review it before sharing it)."""
    from fedrisk.data import draft_contract, read_table

    protected_columns = tuple(c.strip() for c in protected.split(",") if c.strip())
    drafted = draft_contract(read_table(table), target, positive, protected=protected_columns,
                             name=table.stem)
    drafted.save(output)
    console.print(f"wrote {output}: {len(drafted.numeric)} numeric, "
                  f"{len(drafted.categorical)} categorical features. It was drafted from one "
                  "bank's table: review bounds and vocabularies before sharing it.")


@data_app.command("check")
def data_check(
    table: Path,
    contract: Annotated[Path, typer.Option(help="Contract TOML.")],
) -> None:
    """Validate a table against a contract: errors exit 2, warnings exit 0."""
    from fedrisk.data import check_table_file

    report = check_table_file(table, contract)
    for line in report.errors:
        errors.print(f"[red]error:[/red] {line}", highlight=False)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
    if not report.ok:
        raise typer.Exit(2)
    console.print(f"{table}: OK ({report.n_rows} rows, {len(report.warnings)} warnings)")


@data_app.command("split")
def data_split(
    table: Path,
    out: Annotated[Path, typer.Option(help="Directory for one file per bank.")],
    by: Annotated[str | None, typer.Option(help="Column whose values name the banks.")] = None,
    banks: Annotated[int | None, typer.Option(help="Number of banks (Dirichlet skew).")] = None,
    contract: Annotated[Path | None, typer.Option(help="Contract (needed with --banks).")]
    = None,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
) -> None:
    """Split a pooled table into one file per bank."""
    from fedrisk.data import split_table_file

    if (by is None) == (banks is None):
        _fail("give exactly one of --by COLUMN or --banks N")
    paths = split_table_file(table, by=by, n_banks=banks, contract_path=contract, out_dir=out,
                             seed=seed)
    for bank_id, path in paths.items():
        console.print(f"{bank_id}: {path}")


SYNTHESIZE_HELP = (
    "Synthesize a consortium-sized table for capacity planning: new rows like an embedded "
    "public dataset (a Gaussian copula per class), under the same contract.\n\n"
    "Fitted on the embedded public data only. It is a capacity-planning tool, not a privacy "
    "mechanism: synthetic data fitted on a bank's own table would not be differentially "
    "private and must not leave the bank."
)


@data_app.command("synthesize", help=SYNTHESIZE_HELP)
def data_synthesize(
    like: Annotated[str, typer.Option(help="Embedded public dataset to imitate: lending_club or "
                                           "credit_data.")],
    rows: Annotated[int, typer.Option(help="Number of rows to draw.")],
    out: Annotated[Path, typer.Option(help="Directory for data.parquet and contract.toml.")],
    seed: Annotated[int, typer.Option(help="Seed of the fit and the draw (same seed, same "
                                           "bytes).")] = 0,
) -> None:
    """Write OUT/data.parquet and OUT/contract.toml (see SYNTHESIZE_HELP)."""
    from fedrisk.data.synthetic import synthesize_like

    written = synthesize_like(like, rows, out, seed)
    console.print(f"wrote {written.data_path} ({written.n_rows:,} rows like {like}, "
                  f"{written.default_rate:.1%} {written.positive_label}) and "
                  f"{written.contract_path}", highlight=False)


TrustedKeyOption = Annotated[Path | None, typer.Option(
    "--trusted-key", help="The bank's registered Ed25519 public key (PEM): every ledger must "
                          "carry it.")]
TrustedKeysOption = Annotated[Path | None, typer.Option(
    "--trusted-keys", help="A folder of registered keys <bank>.pem (a consortium's "
                           "coordinator/ledger-keys/): each ledger must carry its bank's key.")]


@audit_app.command("verify")
def audit_verify(
    path: Annotated[Path, typer.Argument(help="A ledger file, a bank state dir or a run dir.")],
    trusted_key: TrustedKeyOption = None,
    trusted_keys: TrustedKeysOption = None,
) -> None:
    """Check every ledger's chain, signatures, pinned key and anchor: OK, or why not (exit 1)."""
    from fedrisk.privacy.verify import verify_path

    pins = _trusted(trusted_key, trusted_keys)
    if not path.exists():
        _fail(f"{path}: no such file or directory")
    results = verify_path(path, pins)
    if not results:
        _fail(f"{path}: no ledger found (ledgers are banks' ledgers/*.jsonl files)")
    for result in results:
        if result.ok:
            eps = "-" if result.last_epsilon is None else f"{result.last_epsilon:.4f}"
            console.print(f"OK    {result.bank_id}: {result.entries} entries, last ε {eps}"
                          f"  ({result.path})", highlight=False)
        else:
            where = "" if result.first_bad_index is None else f"entry {result.first_bad_index}: "
            console.print(f"[red]FAIL[/red]  {result.path}: {where}{result.reason}",
                          highlight=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _trusted(key: Path | None, keys: Path | None) -> TrustedKeys | None:
    """The registered ledger keys to pin to, from --trusted-key or --trusted-keys."""
    from fedrisk.privacy.chain import TrustedKeys

    if key is not None and keys is not None:
        _fail("give --trusted-key FILE or --trusted-keys DIR, not both")
    if key is not None:
        return TrustedKeys.from_file(key)
    return None if keys is None else TrustedKeys.from_dir(keys)


@audit_app.command("report")
def audit_report(
    run_dir: Annotated[Path, typer.Argument(help="A finished run dir (metrics.json, model, "
                                                 "data/, banks/).")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Where audit.json and audit.html go (default RUN_DIR/audit).")]
    = None,
    compare: Annotated[Path | None, typer.Option(
        help="A second run on the same data (e.g. --no-dp) shown side by side.")] = None,
    bank: Annotated[list[str] | None, typer.Option(
        help="Audit only this bank (repeatable); default: every bank.")] = None,
    references: Annotated[int, typer.Option(
        help="Reference models per bank for RMIA/LiRA (complementary pairs).")] = 4,
    claimed_epsilon: Annotated[float | None, typer.Option(
        help="Audit every bank against this ε instead of its ledger's (e.g. a --no-dp run "
             "someone claims is ε = 3).")] = None,
    canaries: Annotated[int, typer.Option(
        help="Gradient canaries of the one-run white-box audit per bank (0: off).")] = 50_000,
    input_canaries: Annotated[int, typer.Option(
        help="Crafted records of the one-run black-box audit per bank (0: off).")] = 1_000,
    trusted_key: TrustedKeyOption = None,
    trusted_keys: TrustedKeysOption = None,
) -> None:
    """Audit a finished run: measured privacy, DP implementation check, fairness, reasons, utility.

    Exits 1 when a bank's ledger fails verification (chain, anchor, or the pinned key of
    --trusted-key/--trusted-keys), or a run with a claim (DP, or --claimed-epsilon) fails
    (an empirical ε lower bound above its claim, or a failed implementation check), so it
    can gate a release.
    """
    if claimed_epsilon is not None and not claimed_epsilon >= 0:
        _fail(f"--claimed-epsilon must be a number at least 0, not {claimed_epsilon}")
    if canaries < 0 or input_canaries < 0:
        _fail("--canaries and --input-canaries must be at least 0")
    from fedrisk.audit import AuditError, AuditSettings, build_audit

    pins = _trusted(trusted_key, trusted_keys)
    output = output or run_dir / "audit"
    settings = AuditSettings(n_reference=references, canaries=canaries,
                             input_canaries=input_canaries, claimed_epsilon=claimed_epsilon)
    try:
        document = build_audit(run_dir, output, compare, bank, settings, trusted_keys=pins)
    except AuditError as error:
        _fail(str(error))
    verdict = {None: "no claim", True: "passed", False: "[red]FAILED[/red]"}
    for row in document["banks"]:
        eps = "-" if row["epsilon"] is None else f"{row['epsilon']:.3f}"
        console.print(f"{row['id']:<16} ε {eps:>6}  MIA AUC {row['mia_auc']:.3f}  "
                      f"TPR@1%FPR {row['tpr_at_1pct_fpr']:.3f}  "
                      f"ε_LB {row['epsilon_lower_bound']:.2f}{_canary_text(row)}  "
                      f"{verdict[row['audit_passed']]}", highlight=False)
    check = document["implementation_check"]["passed"]
    if check is not None:
        console.print("implementation check: " + ("passed" if check else "[red]FAILED[/red] "
                      "(see section 4 of audit.html)"), highlight=False)
    for row in document["banks"]:
        if not row["ledger_ok"]:
            console.print(f"ledger of {row['id']}: [red]FAILED[/red] "
                          f"({row.get('ledger_reason') or 'no ledger on this data'})",
                          highlight=False)
    console.print(f"wrote {output / 'audit.json'}, {output / 'audit.html'}", highlight=False)
    claimed = document["dp"] or claimed_epsilon is not None
    if (not document["ledgers_ok"] or (claimed and document["audit_passed"] is not True)
            or check is False):
        raise typer.Exit(1)


def _canary_text(row: dict) -> str:
    """`` canary ε_LB 1.21 / 2.73`` (white-box bound / claim) for one bank's audit line."""
    bound = row.get("canary_epsilon_lower_bound")
    if bound is None:
        return ""
    claim = row.get("canary_claimed_epsilon")
    text = f"  canary ε_LB {bound:.2f}" + ("" if claim is None else f" / {claim:.2f}")
    return text + ("  [red]canary FAILED[/red]" if row.get("canary_passed") is False else "")


def _parse_run_config(text: str | None) -> dict[str, str]:
    from fedrisk.config import ConfigError

    if not text:
        return {}
    pairs = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--run-config item '{item}' is not key=value")
        pairs[key] = value.strip('"')
    return pairs


def _show_progress(verbose: bool) -> None:
    """Show fedrisk's progress lines; Flower's own INFO chatter only with --verbose.

    Flower colours its log level names; written to a file or a pipe, the colour codes
    would be noise, so they are on only when stderr (where the lines go) is a terminal.
    """
    from flwr.common.logger import update_console_handler

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False  # Ray's root handler would print every line twice
    update_console_handler(colored=sys.stderr.isatty())
    if verbose:
        return
    for handler in flwr_logger.handlers:
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or "fedrisk" in r.pathname)


def _print_summary(metrics: dict, output_dir: Path, show_banks: bool = False) -> None:
    """The per-bank table (above SUMMARY_ABOVE banks: quantiles and the worst banks)."""
    dp = metrics["privacy"] != "NON-PRIVATE baseline"
    banks = metrics["banks"]
    lifetime = dp and any(b.get("epsilon_lifetime") != b.get("epsilon") for b in banks)
    columns = {"bank": "id", "train": "n_train", "test": "n_test",
               "local DP" if dp else "local": "local_only_auc",
               "local LR": "local_only_nonprivate_auc", "global": "auc",
               "personalized": "personalized_auc"}
    for header, key in list(columns.items()):
        # local-only columns only with --baselines, personalized only with fine-tuning
        optional = key.startswith("local_only") or key == "personalized_auc"
        if optional and all(b.get(key) is None for b in banks):
            del columns[header]
    caption = "AUC of each model on the bank's own held-out split"
    if dp:
        columns |= {"ε": "epsilon", "ε eval": "epsilon_eval", "σ": "noise_multiplier",
                    "δ<1/n": "delta_below_1_over_n"}
        caption += (", read off noisy DP histograms (± noise sd; small counts pull toward 0.5)"
                    if any(b.get("auc_noise_sd") for b in banks) else "")
    if "local LR" in columns:
        caption += (f"; local: the bank alone ({'DP at the run budget' if dp else 'no DP'}), "
                    "LR: its non-private logistic regression (a simulation-only reference)")
    if lifetime:
        columns["ε lifetime"] = "epsilon_lifetime"
    title = f"fedrisk: {metrics['privacy']}"
    if len(banks) > SUMMARY_ABOVE and not show_banks:
        console.print(_quantile_table(banks, columns, title))
        worst = sorted((b for b in banks if isinstance(b.get("auc"), float)),
                       key=lambda b: b["auc"])[:WORST_BANKS]
        console.print(_bank_table(worst, columns, f"the {len(worst)} banks with the lowest "
                                                  "global AUC", caption))
        console.print(f"{len(banks)} banks: --show-banks prints every bank (all are in "
                      f"{output_dir / 'metrics.json'})", highlight=False)
    else:
        console.print(_bank_table(banks, columns, title, caption))
    final = metrics["final"]
    line = f"consortium AUC {_cell(final, 'auc')}"
    if final.get("personalized_auc") is not None and final.get("auc_noise_sd"):
        line += f" (personalized models {_cell(final, 'personalized_auc')})"
    line += f", Brier {_fmt(final['brier'])}"
    if metrics["baselines"].get("centralized_auc") is not None:
        line += f"; centralized non-private AUC {_fmt(metrics['baselines']['centralized_auc'])}"
    console.print(line)
    if final.get("mean_pd") is not None:
        console.print(_calibration_line(final), highlight=False)
    if metrics.get("institution_dp"):
        console.print(_institution_line(metrics["institution_dp"]), highlight=False)
    if metrics["baselines"].get("centralized_best_auc") is not None:
        console.print(_references_line(metrics), highlight=False)
    console.print(f"wrote {output_dir / 'metrics.json'}, {output_dir / 'model.safetensors'}, "
                  f"{output_dir / 'training.png'}")


def _calibration_line(final: dict) -> str:
    """Mean PD against the default rate on the pooled held-out histograms, and the stored map."""
    line = (f"mean PD {_fmt(final['mean_pd'])} vs default rate "
            f"{_fmt(final['observed_default_rate'])} on the pooled held-out histograms")
    stored = final.get("pd_calibration")
    if stored:
        line += (f" (model calibrated by the consortium: {stored['method']} slope "
                 f"{stored['slope']:.3f}, intercept {stored['intercept']:.3f}; before, mean PD "
                 f"{_fmt(stored['mean_pd_uncalibrated'])})")
    return line


def _institution_line(institution: dict) -> str:
    """The institution-level ε, with the trust it rests on."""
    return (f"institution-level DP: ε {institution['epsilon']:.3g} at δ {institution['delta']:g} "
            f"over {institution['rounds']} rounds (one bank hidden; σ "
            f"{institution['noise_multiplier']:g}, clipping norm "
            f"{institution['clipping_norm']:g}, sample rate {institution['sample_rate']:g}); "
            "holds only if the coordinator adds the noise")


def _references_line(metrics: dict) -> str:
    """The non-private references of ``--baselines`` (simulation only) against the global model."""
    refs = metrics["baselines"]
    line = (f"non-private references (simulation only): centralized MLP "
            f"{_fmt(refs['centralized_mlp_auc'])}, logistic "
            f"{_fmt(refs['centralized_logistic_auc'])}, GBDT {_fmt(refs['centralized_gbdt_auc'])}")
    pairs = [(b["auc"], b["local_only_nonprivate_auc"]) for b in metrics["banks"]
             if all(isinstance(v, float) and np.isfinite(v)
                    for v in (b.get("auc"), b.get("local_only_nonprivate_auc")))]
    if pairs:
        line += (f"; the global model beats a bank's own non-private logistic at "
                 f"{sum(g > alone for g, alone in pairs)} of {len(pairs)} banks")
        if any(b.get("auc_noise_sd") for b in metrics["banks"]):
            line += " (by its noisy DP AUC)"
    return line


def _bank_table(banks: list[dict], columns: dict[str, str], title: str, caption: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, caption=caption)
    for header, key in columns.items():
        # a narrow terminal wraps headers, never cuts a bank's name or a figure
        widest = max([len(word) for word in header.split()]
                     + [len(_cell(bank, key)) for bank in banks])
        table.add_column(header, justify="left" if header == "bank" else "right",
                         min_width=widest)
    for bank in banks:
        table.add_row(*(_cell(bank, key) for key in columns.values()))
    return table


def _quantile_table(banks: list[dict], columns: dict[str, str], title: str) -> Table:
    """One row per numeric column: its minimum, 10%, median, 90% and maximum over banks."""
    levels = {"min": 0.0, "10%": 0.1, "median": 0.5, "90%": 0.9, "max": 1.0}
    table = Table(title=f"{title}: {len(banks)} banks", box=box.SIMPLE_HEAD,
                  caption="each figure's distribution over banks (AUCs on each bank's own "
                          "held-out split)")
    table.add_column("", justify="left")
    for level in levels:
        table.add_column(level, justify="right")
    for header, key in columns.items():
        values = [b[key] for b in banks if isinstance(b.get(key), int | float)
                  and not isinstance(b.get(key), bool)]
        if not values:
            continue
        quantiles = np.quantile(np.asarray(values, dtype=float), list(levels.values()))
        integers = all(isinstance(v, int) for v in values)
        table.add_row(header, *(f"{q:,.0f}" if integers else f"{q:.3f}" for q in quantiles))
    return table


def _cell(record: dict, key: str) -> str:
    """A value, or under DP an AUC read off noisy histograms with its noise sd."""
    value, noise = record.get(key), record.get(f"{key}_noise_sd")
    if isinstance(value, float) and noise:
        return f"{value:.2f}±{noise:.2f}"
    return _fmt(value)


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))


def main() -> None:
    """Entry point: user errors are one line on stderr with exit code 2, never a traceback."""
    try:
        app()
    except UserError as error:  # escaped: "[...]" in a message is text, not rich markup
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
