"""Risk tools on a finished run: applicant scoring with reasons, portfolio loss by Monte Carlo.

Imports only :mod:`fedrisk.models` and :mod:`fedrisk.data` (plus numpy, scipy,
scikit-learn, captum, torch and matplotlib): it reads a run directory, never a
federation.
"""

from fedrisk.models import ModelFileError
from fedrisk.risk.calibration import Calibrator, fit_calibrator
from fedrisk.risk.montecarlo import (
    LossSimulation,
    basel_retail_correlation,
    conditional_default_probability,
    simulate_losses,
    vasicek_loss_quantile,
)
from fedrisk.risk.portfolio import PortfolioResult, portfolio_loss
from fedrisk.risk.run import Run, load_run
from fedrisk.risk.scoring import ScoringResult, score_applicants

__all__ = [
    "Calibrator",
    "LossSimulation",
    "ModelFileError",
    "PortfolioResult",
    "Run",
    "ScoringResult",
    "basel_retail_correlation",
    "conditional_default_probability",
    "fit_calibrator",
    "load_run",
    "portfolio_loss",
    "score_applicants",
    "simulate_losses",
    "vasicek_loss_quantile",
]
