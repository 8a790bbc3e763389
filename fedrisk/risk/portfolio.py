"""Loss distribution of a bank's loan book: expected loss, VaR and expected shortfall.

PDs come from the run's model (calibrated on the bank's held-out split when
calibration data is given), exposures from the contract's exposure column, and
losses from the one-factor Gaussian copula simulated in :mod:`fedrisk.risk.montecarlo`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from fedrisk.data import DataError, read_table, write_table
from fedrisk.files import ensure_private_dir, write_private_file
from fedrisk.risk.calibration import calibrator_for, default_calibration
from fedrisk.risk.montecarlo import LossSimulation, basel_retail_correlation, simulate_losses
from fedrisk.risk.rows import ROW_COLUMN, check_rows
from fedrisk.risk.run import Run, load_run
from fedrisk.risk.scoring import (
    EXPECTED_LOSS_COLUMN,
    EXPOSURE_COLUMN,
    PD_COLUMN,
    check_lgd,
    score_rows,
)

SUMMARY_FILE = "portfolio.json"
HISTOGRAM_FILE = "loss_distribution.png"
CONTRIBUTIONS_FILE = "contributions.csv"
REJECTS_FILE = "book.rejects.csv"
CONTRIBUTION_COLUMN = "es_contribution"
SHARE_COLUMN = "es_share"
BASEL_RETAIL = "Basel II other retail, rho(PD)"


@dataclass(frozen=True)
class PortfolioResult:
    """Loss distribution of a loan book and where its tail comes from.

    Attributes:
        n_loans, total_exposure: size of the book.
        scenarios, seed, lgd: simulation settings.
        asset_correlation: the fixed correlation, or None for Basel II retail rho(PD).
        calibration: ``"platt"``, ``"isotonic"``, ``"consortium"`` or ``"uncalibrated"``.
        expected_loss: mean simulated loss.
        expected_loss_exact: ``sum(PD x LGD x exposure)``, which the mean estimates.
        value_at_risk, expected_shortfall: by confidence level.
        contribution_level: the level whose expected shortfall is allocated to loans.
        contributions: every loan (``row``, id, PD, exposure, expected loss, ES
            contribution and share), largest contribution first.
        seconds: wall time of the simulation.
        simulation: the simulated losses (scenarios in ascending factor order).
        summary_path, histogram_path, contributions_path: files written, if any.

    """

    n_loans: int
    total_exposure: float
    scenarios: int
    seed: int
    lgd: float
    asset_correlation: float | None
    calibration: str
    expected_loss: float
    expected_loss_exact: float
    value_at_risk: dict[float, float]
    expected_shortfall: dict[float, float]
    contribution_level: float
    contributions: pd.DataFrame
    seconds: float
    simulation: LossSimulation
    summary_path: Path | None = None
    histogram_path: Path | None = None
    contributions_path: Path | None = None

    def summary(self, n_top: int = 10) -> dict[str, Any]:
        """The result as plain JSON types, with the ``n_top`` largest contributors."""
        return {
            "loans": self.n_loans, "total_exposure": self.total_exposure,
            "scenarios": self.scenarios, "seed": self.seed, "lgd": self.lgd,
            "asset_correlation": BASEL_RETAIL if self.asset_correlation is None
            else self.asset_correlation,
            "calibration": self.calibration,
            "expected_loss": self.expected_loss,
            "expected_loss_exact": self.expected_loss_exact,
            "value_at_risk": {_level_key(k): v for k, v in self.value_at_risk.items()},
            "expected_shortfall": {_level_key(k): v for k, v in self.expected_shortfall.items()},
            "contribution_level": self.contribution_level,
            "top_contributors": self.contributions.head(n_top).to_dict(orient="records"),
            "candidate_defaults": self.simulation.candidate_defaults,
            "seconds": self.seconds,
        }


def portfolio_loss(
    run_dir: str | Path,
    book_path: str | Path,
    *,
    scenarios: int = 1_000_000,
    asset_correlation: float | None = None,
    lgd: float = 0.45,
    seed: int = 0,
    output_dir: str | Path | None = None,
    calibration_data: str | Path | None = None,
    calibration_method: str = "platt",
    confidence_levels: tuple[float, ...] = (0.99, 0.999),
    contribution_level: float = 0.99,
    n_top_contributors: int = 10,
    id_column: str = "loan_id",
    split_seed: int | None = None,
    workers: int = 1,
    candidates_per_block: int = 1_000_000,
) -> PortfolioResult:
    """Simulate the loss distribution of a loan book under the one-factor Gaussian copula.

    Args:
        run_dir: a finished run (``fedrisk simulate --output-dir``).
        book_path: the bank's loan table (CSV/Parquet, the run's contract). Every loan
            must pass the contract: a loss without some loans would understate risk.
        scenarios: Monte Carlo scenarios of the systematic factor.
        asset_correlation: one correlation for every loan; None uses the Basel II
            "other retail" formula rho(PD).
        lgd: loss given default, in [0, 1].
        seed: seed of the simulation (the same inputs and seed give the same result).
        output_dir: where to write ``portfolio.json``, ``loss_distribution.png`` and
            ``contributions.csv`` (and ``book.rejects.csv`` if loans fail the
            contract); None writes nothing.
        calibration_data: the bank's own table (or a calibrator JSON) to calibrate PDs.
        calibration_method: ``"platt"`` or ``"isotonic"``.
        confidence_levels: levels of the VaR and expected shortfall reported.
        contribution_level: level whose expected shortfall is allocated to loans.
        n_top_contributors: loans listed in ``portfolio.json``.
        id_column: copied to the contributions when the book has it.
        split_seed: the bank's held-out split seed (its policy's ``split-seed``) for
            calibration; None uses the run's ``seed`` (a simulation's default policy).
        workers: threads for the simulation (results do not depend on it).
        candidates_per_block: memory bound of the simulation, see
            :func:`fedrisk.risk.montecarlo.simulate_losses`.

    Raises:
        DataError: one line: bad arguments, unreadable book, loans failing the
            contract, no exposure column, bad model file or calibration data.

    """
    _check_arguments(lgd, asset_correlation, scenarios)
    run = load_run(run_dir)
    if run.contract.exposure is None:
        raise DataError(f"contract '{run.contract.name}' has no exposure column; a portfolio "
                        "loss needs each loan's exposure")
    out = None if output_dir is None else _output_dir(output_dir)
    loans = _score_book(run, Path(book_path), out, calibration_data, calibration_method, lgd,
                        id_column, split_seed)
    pd_, exposure = loans[PD_COLUMN].to_numpy(), loans[EXPOSURE_COLUMN].to_numpy()
    correlation = basel_retail_correlation(pd_) if asset_correlation is None else asset_correlation
    started = time.perf_counter()
    simulation = simulate_losses(pd_, lgd * exposure, correlation, scenarios=scenarios, seed=seed,
                                 contribution_level=contribution_level, workers=workers,
                                 candidates_per_block=candidates_per_block)
    seconds = time.perf_counter() - started
    result = PortfolioResult(
        n_loans=len(loans), total_exposure=float(exposure.sum()), scenarios=scenarios,
        seed=seed, lgd=lgd, asset_correlation=asset_correlation,
        calibration=(str(loans["calibration"].iloc[0]) if len(loans)
                     else default_calibration(run)),
        expected_loss=simulation.expected_loss,
        expected_loss_exact=float(loans[EXPECTED_LOSS_COLUMN].sum()),
        value_at_risk={level: simulation.value_at_risk(level) for level in confidence_levels},
        expected_shortfall={level: simulation.expected_shortfall(level)
                            for level in confidence_levels},
        contribution_level=contribution_level,
        contributions=_contributions(loans, simulation), seconds=seconds, simulation=simulation,
    )
    return result if out is None else _write(result, out, n_top_contributors)


def _check_arguments(lgd: float, asset_correlation: float | None, scenarios: int) -> None:
    check_lgd(lgd)
    if asset_correlation is not None and not 0 <= asset_correlation < 1:
        raise DataError(f"asset correlation must be at least 0 and below 1, got "
                        f"{asset_correlation}")
    if scenarios < 1:
        raise DataError(f"scenarios must be at least 1, got {scenarios}")


def _output_dir(path: str | Path) -> Path:
    directory = Path(path)
    try:
        ensure_private_dir(directory)  # contributions and rejects are per-loan
    except OSError as error:
        raise DataError(f"{directory}: cannot create output directory ({error.strerror})"
                        ) from None
    return directory


def _score_book(run: Run, book_path: Path, out: Path | None, calibration_data: str | Path | None,
                calibration_method: str, lgd: float, id_column: str,
                split_seed: int | None) -> pd.DataFrame:
    """PD, exposure and expected loss of every loan; refuses a book with bad loans."""
    checked = check_rows(read_table(book_path), run.contract, str(book_path), need_exposure=True)
    if len(checked.rejects):
        first = checked.rejects.iloc[0]
        where = ""
        if out is not None:
            write_table(checked.rejects, out / REJECTS_FILE)
            where = f"; all listed in {out / REJECTS_FILE}"
        raise DataError(
            f"{book_path}: {len(checked.rejects)} of {len(checked.rejects) + len(checked.valid)}"
            f" loans fail the contract (row {first[ROW_COLUMN]}: {first['reason']}){where}; "
            "a portfolio loss without them would understate risk")
    calibrator = (None if calibration_data is None
                  else calibrator_for(run, calibration_data, calibration_method, split_seed))
    return score_rows(run, checked.valid, calibrator=calibrator, lgd=lgd, n_reasons=0,
                      id_column=id_column, batch_size=65_536)


def _contributions(loans: pd.DataFrame, simulation: LossSimulation) -> pd.DataFrame:
    keep = [c for c in loans.columns if c not in ("risk_band", "calibration")]
    table = loans[keep].copy()
    table[CONTRIBUTION_COLUMN] = simulation.contributions
    total = simulation.contributions.sum()
    table[SHARE_COLUMN] = simulation.contributions / total if total > 0 else 0.0
    return table.sort_values(CONTRIBUTION_COLUMN, ascending=False, kind="stable").reset_index(
        drop=True)


def _write(result: PortfolioResult, out: Path, n_top: int) -> PortfolioResult:
    result = replace(result, summary_path=out / SUMMARY_FILE, histogram_path=out / HISTOGRAM_FILE,
                     contributions_path=out / CONTRIBUTIONS_FILE)
    write_table(result.contributions, result.contributions_path)
    plot_loss_distribution(result, result.histogram_path)
    # private: the top contributors are individual loans (row, PD, exposure)
    write_private_file(result.summary_path,
                       (json.dumps(result.summary(n_top), indent=2) + "\n").encode("utf-8"))
    return result


def plot_loss_distribution(result: PortfolioResult, path: Path, bins: int = 200) -> None:
    """Histogram of simulated losses (log counts) with EL, VaR and ES lines, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import StrMethodFormatter

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.hist(result.simulation.losses, bins=bins, color="#8aa9c8", log=True)
    axis.axvline(result.expected_loss, color="black", label=f"EL {result.expected_loss:,.0f}")
    for (level, var), color in zip(result.value_at_risk.items(), ("#d08000", "#c00000"),
                                   strict=False):
        axis.axvline(var, color=color, label=f"VaR {_level_key(level)} {var:,.0f}")
        es = result.expected_shortfall[level]
        axis.axvline(es, color=color, linestyle="--", label=f"ES {_level_key(level)} {es:,.0f}")
    axis.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axis.set_xlabel("portfolio loss")
    axis.set_ylabel("scenarios (log scale)")
    axis.set_title(f"{result.n_loans:,} loans, {result.scenarios:,} scenarios, LGD {result.lgd:g}"
                   f" ({result.calibration} PD)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _level_key(level: float) -> str:
    return f"{level * 100:g}%"
