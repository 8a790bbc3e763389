"""The one place where the audit reaches the banks' DP-SGD training path.

Two audit parts must run the *same* code a bank trains with: reference (shadow)
models for the membership-inference attacks, and the white-box canary test of the
DP mechanism. That code is ``fedrisk.privacy.dpsgd.train_locally``, reached here
behind a small callable type so that tests and other hosts can inject any
``TrainFn``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedrisk.privacy.accounting import DPSchedule, steps_per_epoch

History = list[tuple[float, float, int]]


@dataclass(frozen=True)
class TrainPlan:
    """Optimizer settings of one local training phase (mirrors the run config).

    Attributes:
        local_epochs: passes over the data (expected, under Poisson sampling).
        batch_size: expected batch size; the DP sample rate is ``1 / ceil(n / batch_size)``.
        learning_rate / momentum: SGD settings.
        max_grad_norm: the per-record clipping bound C, i.e. the DP sensitivity.
        max_steps_per_epoch: DP steps per epoch at most (0: no cap), as the run config's
            ``max-steps-per-epoch``: the sample rate is one over the capped steps.

    """

    local_epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    max_grad_norm: float
    max_steps_per_epoch: int = 0

    @classmethod
    def from_recorded_config(cls, config: dict[str, Any], record_level: bool = True
                             ) -> TrainPlan:
        """The plan of a run from its recorded run config (metrics.json ``config``).

        ``record_level``: the banks trained with DP-SGD (its learning rate), else the
        non-private one. A run recorded before ``max-steps-per-epoch`` existed had no cap.
        """
        rate = config.get("learning-rate", 1.0) if record_level else config.get(
            "learning-rate-no-dp", config.get("learning-rate", 1.0))
        return cls(int(config.get("local-epochs", 2)), int(config.get("batch-size", 256)),
                   float(rate), float(config.get("momentum", 0.9)),
                   float(config.get("max-grad-norm", 1.0)),
                   int(config.get("max-steps-per-epoch", 0)))

    def steps_per_epoch(self, n_records: int) -> int:
        """DP steps of one epoch over ``n_records`` rows; the sample rate is one over it."""
        return steps_per_epoch(n_records, self.batch_size, self.max_steps_per_epoch)


TrainFn = Callable[..., History]
"""``(model, features, labels, plan, schedule, seed, grades=None, canaries=None) -> history``.

Trains a model in place (``grades``: grade indices for a model with a grade head, trained
jointly as the banks do; ``canaries``: the one-run canary audit's gradient canaries,
:class:`fedrisk.privacy.dpsgd.GradientCanaries`); returns the accountant history of what
it ran (empty without DP).
"""


def bank_training_path() -> TrainFn:
    """The banks' own DP-SGD path (``train_locally``), adapted to :data:`TrainFn`.

    Privacy meaning: the canary test and the reference models exercise exactly the
    clipping, noise and Poisson sampling that the audited banks ran.
    """
    from fedrisk.privacy.dpsgd import GradientCanaries, TrainingSettings, train_locally

    def train(model: nn.Module, features: np.ndarray, labels: np.ndarray, plan: TrainPlan,
              schedule: DPSchedule | None, seed: int, grades: np.ndarray | None = None,
              canaries: GradientCanaries | None = None) -> History:
        settings = TrainingSettings(plan.local_epochs, plan.batch_size, plan.learning_rate,
                                    plan.momentum, plan.max_grad_norm,
                                    max_steps_per_epoch=plan.max_steps_per_epoch)
        result = train_locally(model, features, labels, settings, schedule, seed, grades,
                               canaries)
        return [(float(s), float(q), int(k)) for s, q, k in result.history]

    return train
