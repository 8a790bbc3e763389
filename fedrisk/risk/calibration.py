"""Bank-local calibration of the consortium model's probabilities of default.

The federated model ranks applicants for the whole consortium. Its file carries the
consortium's calibration (fitted by the coordinator on all banks' DP held-out histograms,
applied as the model is loaded: :mod:`fedrisk.models.calibration`), so its PDs match the
consortium's default rate; they need not match one bank's. A bank calibrates on its own
held-out split (the rows that never trained: ``stratified_split`` with the run's ``seed``
and ``test-fraction``), by Platt scaling (a logistic regression on the logit,
unpenalized) or isotonic regression on the logit. The calibrator is stored as JSON,
never pickled, and is bound to the model file by its SHA-256.

Privacy note: a Platt calibrator is two numbers. An isotonic calibrator lists
logits and default rates of the bank's own held-out rows: keep it at the bank.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

from fedrisk.data import DataError, check_table, read_table, stratified_split
from fedrisk.data.errors import first_line
from fedrisk.files import write_private_file
from fedrisk.models.calibration import fit_platt
from fedrisk.risk.run import Run

CALIBRATION_METHODS = ("platt", "isotonic")
UNCALIBRATED = "uncalibrated"
CONSORTIUM = "consortium"  # the model file's own calibration, fitted on all banks' releases
CALIBRATOR_FORMAT = "fedrisk-calibrator"
CALIBRATOR_VERSION = 1
_JSON_SUFFIXES = (".json",)


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from model logits to calibrated probabilities of default.

    Attributes:
        method: ``"platt"`` or ``"isotonic"``.
        slope, intercept: Platt's ``PD = sigmoid(slope * logit + intercept)``.
        logit_knots, pd_knots: isotonic step points, linearly interpolated and held
            constant beyond the ends.
        model_sha256: SHA-256 of the model file the calibrator was fitted for.
        fitted_on: where it was fitted: table, held-out rows and defaults, seed,
            test fraction, and the held-out default rate and mean PD before/after.

    """

    method: str
    model_sha256: str
    slope: float = 1.0
    intercept: float = 0.0
    logit_knots: list[float] = field(default_factory=list)
    pd_knots: list[float] = field(default_factory=list)
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of default for model logits."""
        if self.method == "platt":
            return expit(self.slope * np.asarray(logits, dtype=float) + self.intercept)
        return np.interp(logits, self.logit_knots, self.pd_knots)

    def save(self, path: Path) -> None:
        """Write the calibrator as JSON, a private file: its knots are held-out rows' logits."""
        payload = {"format": CALIBRATOR_FORMAT, "version": CALIBRATOR_VERSION, **asdict(self)}
        write_private_file(Path(path), (json.dumps(payload, indent=2) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: Path, model_sha256: str) -> Calibrator:
        """Read a calibrator written by :meth:`save` for this model.

        Raises:
            DataError: not a calibrator file, invalid, or fitted for another model.

        """
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            calibrator = _calibrator_from_json(payload)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{path}: not a valid calibrator ({first_line(error)})") from None
        if calibrator.model_sha256 != model_sha256:
            raise DataError(f"{path}: calibrator was fitted for another model file "
                            "(model SHA-256 differs); refit it on the bank's table")
        return calibrator


def default_calibration(run: Run) -> str:
    """What a PD is without a bank calibrator: the model file's consortium calibration, if any."""
    return CONSORTIUM if run.model.calibration is not None else UNCALIBRATED


def calibrator_for(run: Run, source: str | Path, method: str, seed: int | None) -> Calibrator:
    """Fit a calibrator on a bank's held-out split, or load one saved earlier (``.json``).

    Args:
        run: the opened run.
        source: the bank's own table (CSV/Parquet) or a calibrator JSON file.
        method: ``"platt"`` or ``"isotonic"`` (ignored when loading JSON).
        seed: split seed; None uses the run's ``seed`` (the split the bank held out).

    Raises:
        DataError: one line: unknown method, unreadable or invalid table, no split settings.

    """
    path = Path(source)
    if path.suffix.lower() in _JSON_SUFFIXES:
        return Calibrator.load(path, run.model_sha256)
    if method not in CALIBRATION_METHODS:
        raise DataError(f"unknown calibration method '{method}'; choose one of "
                        f"{', '.join(CALIBRATION_METHODS)}")
    split_seed = run.seed if seed is None else seed
    if split_seed is None or run.test_fraction is None:
        raise DataError(f"{run.directory}: no metrics.json, so the held-out split of the bank "
                        "is unknown; cannot calibrate")
    held_out = _held_out_split(run, path, split_seed)
    logits = run.logits(run.contract.encode(held_out))
    labels = run.contract.labels(held_out, source=str(path))
    calibrator = fit_calibrator(logits, labels, method, run.model_sha256)
    return _with_provenance(calibrator, logits, labels, path, split_seed, run.test_fraction)


def fit_calibrator(logits: np.ndarray, labels: np.ndarray, method: str, model_sha256: str
                   ) -> Calibrator:
    """Fit Platt scaling or isotonic regression of 0/1 labels on logits.

    Isotonic outputs are kept within ``[1 / (2n), 1 - 1 / (2n)]`` for ``n`` rows: a
    held-out set of ``n`` rows cannot tell a PD below half a default from zero.
    """
    logits, labels = np.asarray(logits, dtype=float), np.asarray(labels, dtype=float)
    if method == "platt":
        platt = fit_platt(logits, labels)
        return Calibrator("platt", model_sha256, slope=platt.slope, intercept=platt.intercept)
    floor = 0.5 / len(labels)
    isotonic = IsotonicRegression(y_min=floor, y_max=1 - floor, out_of_bounds="clip")
    isotonic.fit(logits, labels)
    return Calibrator("isotonic", model_sha256,
                      logit_knots=isotonic.X_thresholds_.tolist(),
                      pd_knots=isotonic.y_thresholds_.tolist())


def _held_out_split(run: Run, path: Path, seed: int) -> pd.DataFrame:
    table = read_table(path)
    report = check_table(table, run.contract, source=str(path))
    if not report.ok:
        raise DataError(f"calibration table fails the contract: {report.errors[0]}")
    _, held_out = stratified_split(table, run.contract, run.test_fraction, seed)
    return held_out


def _with_provenance(calibrator: Calibrator, logits: np.ndarray, labels: np.ndarray, path: Path,
                     seed: int, test_fraction: float) -> Calibrator:
    fitted_on = {
        "table": str(path), "seed": seed, "test_fraction": test_fraction,
        "held_out_rows": int(labels.size), "held_out_defaults": int(labels.sum()),
        "held_out_default_rate": float(labels.mean()),
        "mean_pd_uncalibrated": float(expit(logits).mean()),
        "mean_pd_calibrated": float(calibrator.probabilities(logits).mean()),
    }
    return Calibrator(**{**asdict(calibrator), "fitted_on": fitted_on})


def _calibrator_from_json(payload: dict[str, Any]) -> Calibrator:
    if payload.get("format") != CALIBRATOR_FORMAT or payload.get("version") != CALIBRATOR_VERSION:
        raise ValueError(f"expected format '{CALIBRATOR_FORMAT}' version {CALIBRATOR_VERSION}")
    if payload["method"] not in CALIBRATION_METHODS:
        raise ValueError(f"unknown method {payload['method']!r}")
    knots = [float(v) for v in payload.get("logit_knots", [])]
    pds = [float(v) for v in payload.get("pd_knots", [])]
    if payload["method"] == "isotonic" and (not knots or len(knots) != len(pds)
                                            or not all(0 < p < 1 for p in pds)):
        raise ValueError("isotonic knots must be matching, non-empty, with PDs in (0, 1)")
    return Calibrator(str(payload["method"]), str(payload["model_sha256"]),
                      float(payload.get("slope", 1.0)), float(payload.get("intercept", 0.0)),
                      knots, pds, dict(payload.get("fitted_on", {})))
