"""Score applicants with a finished run's model: PD, risk band, expected loss and reasons.

Nothing is dropped silently: every input row is either scored (one output row) or
rejected (one row in the rejects file, with its reason).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from fedrisk.data import DataError, read_table, write_table
from fedrisk.data.values import to_float
from fedrisk.risk.calibration import Calibrator, calibrator_for, default_calibration
from fedrisk.risk.reasons import column_attributions, top_reasons
from fedrisk.risk.rows import ROW_COLUMN, check_rows
from fedrisk.risk.run import Run, load_run

PD_COLUMN = "pd"
BAND_COLUMN = "risk_band"
EXPOSURE_COLUMN = "exposure"
EXPECTED_LOSS_COLUMN = "expected_loss"
GRADE_COLUMN = "grade"
CALIBRATION_COLUMN = "calibration"
REASON_PREFIX = "reason_"


@dataclass(frozen=True)
class ScoringResult:
    """What :func:`score_applicants` did.

    Attributes:
        n_applicants: rows in the input table.
        n_scored: rows scored (one output row each).
        n_rejected: rows rejected, with reasons (``n_scored + n_rejected == n_applicants``).
        calibration: ``"platt"``, ``"isotonic"`` (the bank's own calibrator, fitted on top of
            the model file's), ``"consortium"`` (the model file's calibration alone) or
            ``"uncalibrated"`` (a model file without one).
        scores: the scores table (as written to ``output_path``).
        rejects: the rejected rows: ``row``, ``reason`` and the input's columns.
        warnings: repairs the contract makes (imputation, clipping, ...), one line each.
        output_path, rejects_path, calibrator_path: files written (None if not written).
        calibrator: the calibrator applied, if any.

    """

    n_applicants: int
    n_scored: int
    n_rejected: int
    calibration: str
    scores: pd.DataFrame
    rejects: pd.DataFrame
    warnings: list[str]
    output_path: Path | None = None
    rejects_path: Path | None = None
    calibrator_path: Path | None = None
    calibrator: Calibrator | None = None


def score_applicants(
    run_dir: str | Path,
    applicants_path: str | Path,
    output_path: str | Path | None = None,
    *,
    calibration_data: str | Path | None = None,
    calibration_method: str = "platt",
    lgd: float = 0.45,
    with_reasons: bool = True,
    n_reasons: int = 3,
    id_column: str = "applicant_id",
    seed: int | None = None,
    batch_size: int = 65_536,
) -> ScoringResult:
    """Score an applicants table with a run's model.

    Per applicant: PD (calibrated on the bank's own held-out split if
    ``calibration_data`` is given, else the model's own ``sigmoid(logit)``, marked
    ``consortium`` when the model file carries the consortium's calibration),
    risk band (the contract's ``risk_band_edges``, ``A`` best), exposure (the
    contract's exposure column, as given), expected loss ``PD x lgd x exposure`` and
    the ``n_reasons`` strongest reasons in words (DeepLift against the contract center).

    Args:
        run_dir: a finished run (``fedrisk simulate --output-dir``).
        applicants_path: CSV or Parquet with the contract's columns (target optional).
        output_path: scores file (CSV/Parquet by extension). Next to it go
            ``<stem>.rejects<suffix>`` (always, possibly empty) and, when calibrating,
            ``<stem>.calibration.json``. None writes nothing and only returns tables.
        calibration_data: the bank's own table to calibrate on, or a calibrator JSON
            written by an earlier call (refused if fitted for another model file).
        calibration_method: ``"platt"`` or ``"isotonic"``.
        lgd: loss given default, in [0, 1].
        with_reasons: add ``reason_1`` .. ``reason_<n_reasons>``.
        n_reasons: number of reasons per applicant.
        id_column: copied to the scores when the table has it.
        seed: held-out split seed for calibration; None uses the run's ``seed``.
        batch_size: rows per model call.

    Raises:
        DataError: one line: unreadable table, missing column, empty table, bad
            model file (``ModelFileError``), bad calibration data or arguments.

    """
    check_lgd(lgd)
    run = load_run(run_dir)
    source = str(applicants_path)
    table = read_table(applicants_path)
    checked = check_rows(table, run.contract, source, need_exposure=run.contract.exposure
                         is not None)
    calibrator = (None if calibration_data is None
                  else calibrator_for(run, calibration_data, calibration_method, seed))
    scores = score_rows(run, checked.valid, calibrator=calibrator, lgd=lgd,
                        n_reasons=n_reasons if with_reasons else 0, id_column=id_column,
                        batch_size=batch_size)
    result = ScoringResult(len(table), len(scores), len(checked.rejects),
                           calibrator.method if calibrator else default_calibration(run),
                           scores,
                           checked.rejects, checked.warnings, calibrator=calibrator)
    return result if output_path is None else _write(result, Path(output_path))


def score_rows(
    run: Run,
    rows: pd.DataFrame,
    *,
    calibrator: Calibrator | None,
    lgd: float,
    n_reasons: int,
    id_column: str,
    batch_size: int,
) -> pd.DataFrame:
    """Score rows that passed :func:`fedrisk.risk.rows.check_rows` (they carry ``row``).

    PDs are kept strictly inside (0, 1): a float64 sigmoid rounds logits above
    about 37 to exactly 1.
    """
    contract = run.contract
    features = contract.encode(rows)
    logits = run.logits(features, batch_size)
    raw_pd = expit(logits) if calibrator is None else calibrator.probabilities(logits)
    pd_ = np.clip(raw_pd, np.finfo(float).tiny, np.nextafter(1.0, 0.0))
    scores = pd.DataFrame({ROW_COLUMN: rows[ROW_COLUMN].to_numpy()})
    if id_column in rows.columns:
        scores[id_column] = rows[id_column].to_numpy()
    scores[PD_COLUMN] = pd_
    scores[BAND_COLUMN] = contract.risk_bands(pd_)
    if contract.exposure is not None:
        exposure, _ = to_float(rows[contract.exposure])
        scores[EXPOSURE_COLUMN] = exposure
        scores[EXPECTED_LOSS_COLUMN] = pd_ * lgd * exposure
    grades = _grades(run, features, batch_size)
    if grades is not None:
        scores[GRADE_COLUMN] = grades
    if n_reasons > 0:
        attributions = column_attributions(run.model, contract, features, batch_size)
        for rank, words in enumerate(top_reasons(contract, rows, attributions, n_reasons), 1):
            scores[f"{REASON_PREFIX}{rank}"] = words
    scores[CALIBRATION_COLUMN] = (default_calibration(run) if calibrator is None
                                  else calibrator.method)
    return scores


def check_lgd(lgd: float) -> None:
    """Refuse a loss given default outside [0, 1]."""
    if not 0 <= lgd <= 1:
        raise DataError(f"lgd (loss given default) must be between 0 and 1, got {lgd}")


def sibling_path(path: Path, tag: str, suffix: str | None = None) -> Path:
    """``scores.csv`` -> ``scores.<tag>.csv`` (or ``scores.<tag><suffix>``)."""
    return path.with_name(f"{path.stem}.{tag}{path.suffix if suffix is None else suffix}")


def _grades(run: Run, features: np.ndarray, batch_size: int) -> np.ndarray | None:
    head = run.grade_head()
    if head is None or not run.contract.grade_levels:
        return None
    import torch

    levels = np.asarray(run.contract.grade_levels, dtype=object)
    with torch.inference_mode():
        scores = [head(torch.from_numpy(features[start:start + batch_size])).numpy()
                  for start in range(0, len(features), batch_size)]
    if not scores:
        return np.zeros(0, dtype=object)
    positions = np.rint(np.concatenate(scores) * (len(levels) - 1))
    return levels[np.clip(positions, 0, len(levels) - 1).astype(np.int64)]


def _write(result: ScoringResult, output: Path) -> ScoringResult:
    if not output.parent.is_dir():
        raise DataError(f"{output.parent}: output directory does not exist")
    write_table(result.scores, output)
    rejects_path = sibling_path(output, "rejects")
    write_table(result.rejects, rejects_path)
    calibrator_path = None
    if result.calibrator is not None:
        calibrator_path = sibling_path(output, "calibration", ".json")
        result.calibrator.save(calibrator_path)
    return replace(result, output_path=output, rejects_path=rejects_path,
                   calibrator_path=calibrator_path)
