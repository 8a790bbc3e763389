"""The run configuration: one typed view of pyproject ``[tool.flwr.app.config]`` + overrides.

Every setting a user may change lives in the Flower run config (pyproject defaults,
CLI flags mapped onto it). This module only parses and validates it, so a bad value
is a one-line error naming the key instead of a failure deep in a round.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fedrisk.errors import UserError
from fedrisk.models.histograms import HISTOGRAM_BINS as MAX_HISTOGRAM_BINS
from fedrisk.models.networks import MODEL_KINDS

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg")
# Robust strategies read each bank's own update: impossible when SecAgg+ hides them.
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg")
BUDGET_SCOPES = ("run", "dataset")
PERSONALIZATION = ("finetune", "none")
# Run-config keys that a resume sets; every other key of a resumed run is the original's.
RESUME_KEYS = ("run-id", "resume")
PD_CALIBRATIONS = ("platt", "intercept", "none")
DP_LEVELS = ("record", "institution", "both")
# Institution-level noise is added to the weighted mean of clipped updates: only strategies
# whose aggregate is that mean keep the guarantee (FedAdam transforms it before the noise).
INSTITUTION_STRATEGIES = ("fedavg", "fedprox")


class ConfigError(UserError, ValueError):
    """A run configuration value is invalid; the message names the key."""


@dataclass(frozen=True)
class RunConfig:
    """Validated run configuration; field names are the run-config keys with ``-`` → ``_``.

    Privacy-relevant fields:
        dp: DP on (``False`` is a labelled non-private baseline): DP evaluation, and the
            training guarantee ``dp_level`` names.
        dp_level: ``"record"``: each bank's DP-SGD hides any one customer record (the
            bank enforces it; see ``target_epsilon``). ``"institution"``: each bank clips its
            whole round update to ``institution_clipping_norm`` (enforced at the bank) and
            the coordinator adds Gaussian noise of ``institution_noise_multiplier`` ×
            clipping norm / banks to the aggregate (Flower's client-side fixed-clipping DP),
            hiding any one bank's participation, *if the coordinator adds that noise*;
            local training is then not record-level private. ``"both"``: both.
        institution_noise_multiplier / institution_clipping_norm: Flower's
            ``DifferentialPrivacyClientSideFixedClipping`` settings (noise std on the mean
            update = multiplier × norm / sampled banks).
        target_epsilon / target_delta: each bank's (ε, δ) budget for this run
            (``privacy_budget_scope="run"``) or for its lifetime on this data
            (``"dataset"``). Noise is calibrated up front to meet it.
        max_grad_norm: per-record gradient clipping bound (L2), the DP sensitivity.
        max_steps_per_epoch: DP-SGD steps per local epoch at most (0: no cap). A bank with
            more than ``batch_size`` × this many train rows samples a larger expected batch
            (rate 1/this) instead of taking more steps; its σ is calibrated for the steps
            and rate it runs, so ε is unchanged while the noise on each averaged gradient,
            σ·C over the expected batch, shrinks as the bank grows. Non-private training
            ignores it.
        accountant: Opacus accountant used for calibration and reporting (a bank decides
            budgets with the largest ε over this and its own policy's accountants).
        eval_epsilon: each bank's ε for all evaluation statistics of this run (the noisy
            score histograms of its held-out split), composed over the held-out population.
            Noise is calibrated up front so that every planned release meets it.
        eval_every: under DP, evaluate the global model every this many rounds (and always
            after the last round); 0: after the last round only (without DP: every round).
            Each evaluation is one more release under the same ``eval_epsilon``, so more
            evaluations mean more noise in each.
        eval_bins / eval_logit_low / eval_logit_high: the public grid of the DP score
            histograms: ``eval_bins`` equal bins between logit(prior) + ``eval_logit_low``
            and logit(prior) + ``eval_logit_high`` (the contract's public prior default
            rate), the outer bins open-ended. No privacy meaning (one record moves one count
            on any grid); fewer bins mean less noise in the AUC but coarser ties.
        personalization: ``"finetune"``: after the last round each bank fine-tunes the
            global model on its own rows for ``personalization_epochs`` (DP, charged to the
            same budget; the personalized model never leaves the bank) with the smaller
            ``personalization_learning_rate``; ``"none"``.
        pd_calibration: how the coordinator calibrates the final model's PDs on the banks'
            pooled held-out score histograms (the last evaluation's releases: post-processing,
            no extra ε), stored in the model file: ``"platt"`` (slope and intercept on the
            logit), ``"intercept"`` (a shift of the logit only) or ``"none"``.
        ledger_heads_file: the coordinator's record (JSON, on its own host) of each bank's
            last reported ledger head, entry count and lifetime ε; sent to the banks with the
            run's first message so that a bank whose ledger was rolled back refuses. Empty:
            no record (``fedrisk simulate`` and ``consortium run`` set one).
        strategy: Flower strategy on the coordinator: ``fedavg``, ``fedprox``, ``fedadam``
            (these work on the sum of updates, so with or without SecAgg+), or the robust
            ``fedmedian`` (coordinate-wise median) and ``fedtrimmedavg`` (coordinate-wise
            mean without the ``trimmed-fraction`` largest and smallest values). The robust
            ones need every bank's update in the clear, so they are refused with
            ``secure-aggregation``; without SecAgg+ they bound what one poisoning bank
            does to the model (see the README, "Poisoning").
        trimmed_fraction: ``fedtrimmedavg``'s beta: the fraction of banks cut at each end of
            every coordinate (Flower rounds ``beta × banks`` down: with 5 banks, 0.2 cuts
            the largest and smallest update of each coordinate).
        update_norm_bound: without SecAgg+, the coordinator scales each bank's update down
            to at most this multiple of the round's median update L2 norm before the
            strategy aggregates (0: off). One poisoning bank then weighs at most as much as
            this many honest-sized updates, whatever it scales its update by; honest updates
            are within ~1.4× of each other (lending_club, README "Poisoning"), so the
            default 2 changes none of them. Under SecAgg+ the coordinator sees only the sum,
            and ``secagg-clipping-range`` bounds each value a bank sends instead.
        secure_aggregation: Flower SecAgg+; the coordinator sees only the sum of updates.
        secagg_num_shares / secagg_reconstruction_threshold: SecAgg+ secret sharing; a
            value ≤ 1 is a fraction of the sampled banks (1.0 = every bank holds a share
            of every bank's secrets), an integer > 2 an absolute count; 0 (the default):
            every bank up to 10 banks, then a neighbourhood of 2⌈log₂ n⌉ + 1 banks. The
            threshold is how many shares rebuild a dropped bank's mask: higher is safer
            against collusion, lower tolerates more dropouts.
        secagg_max_weight: must be ≥ the largest bank's published train size; updates are
            scaled by n/max_weight before quantization, so a much larger value loses
            precision. 0 (the default): follow the data (``fedrisk simulate``: a power of
            two above the largest table; a deployment: above the largest size banks have
            published in the run).
        run_id: the run's id in the banks' ledgers, which compose each run's ε from its
            ``privacy_spend`` entries. Empty (the default): Flower's run id. A resumed run
            sets the checkpointed run's id, so that every bank accounts its rounds as one
            run and plans the rest of it from what its own ledger says is spent. A
            coordinator choosing it gains nothing: a bank's budget for one id never
            exceeds ``target-epsilon``, and a bank refuses an id it knows under another
            run config.
        resume: continue the run checkpointed in ``output-dir`` at its next round (set by
            ``fedrisk simulate --resume`` and ``fedrisk consortium run --resume``).
    """

    dataset: str = "lending_club"
    data_dir: str = ""
    test_fraction: float = 0.2
    seed: int = 0
    model: str = "mlp"
    hidden_units: str = "64"
    num_server_rounds: int = 20
    strategy: str = "fedavg"
    fedprox_mu: float = 0.01
    trimmed_fraction: float = 0.2
    update_norm_bound: float = 2.0
    server_learning_rate: float = 0.1
    fraction_train: float = 1.0
    min_banks: int = 2
    local_epochs: int = 1
    batch_size: int = 256
    learning_rate: float = 1.0
    learning_rate_no_dp: float = 0.3
    momentum: float = 0.9
    dp: bool = True
    target_epsilon: float = 3.0
    target_delta: float = 1e-5
    max_grad_norm: float = 1.0
    max_steps_per_epoch: int = 8
    accountant: str = "rdp"
    eval_epsilon: float = 1.0
    eval_every: int = 0
    eval_bins: int = 10
    eval_logit_low: float = -4.0
    eval_logit_high: float = 2.0
    privacy_budget_scope: str = "run"
    personalization: str = "none"
    personalization_epochs: int = 1
    personalization_learning_rate: float = 0.1
    pd_calibration: str = "platt"
    dp_level: str = "record"
    institution_noise_multiplier: float = 1.0
    institution_clipping_norm: float = 1.0
    bank_state_dir: str = ""
    ledger_heads_file: str = ""
    secure_aggregation: bool = True
    secagg_num_shares: float = 0.0
    secagg_reconstruction_threshold: float = 0.6
    secagg_max_weight: float = 0.0
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 4194304
    secagg_timeout: float = 0.0
    output_dir: str = "runs/latest"
    run_id: str = ""
    resume: bool = False

    def learning_rate_for(self, private: bool) -> float:
        """SGD learning rate of DP-SGD (``learning-rate``) or of non-private training.

        Their best values differ: DP-SGD averages clipped, noised gradients and wants
        larger steps; non-private baselines (``--no-dp``, the centralized reference)
        use ``learning-rate-no-dp`` so that they are not handicapped by DP's setting.
        """
        return self.learning_rate if private else self.learning_rate_no_dp

    @property
    def evaluation_rounds(self) -> tuple[int, ...]:
        """Rounds after which the global model is evaluated on the banks' held-out splits.

        Under DP: every ``eval_every`` rounds and the last; without DP (exact evaluation,
        no ε to spend) every round.
        """
        last = self.num_server_rounds
        step = self.eval_every if self.dp else 1
        return (*(range(step, last, step) if step else ()), last)

    def ledger_run_id(self, flower_run_id: int | str) -> str:
        """The run's id in the banks' ledgers: ``run-id`` if set, else Flower's run id."""
        return self.run_id or str(flower_run_id)

    def fingerprint(self) -> str:
        """SHA-256 of the run config without the keys a resume sets (``run-id``, ``resume``).

        A resumed run has the same fingerprint as the run it continues; banks sign it into
        every ``privacy_spend`` entry and refuse one run id under two fingerprints.
        """
        kept = {k: v for k, v in self.to_run_config().items() if k not in RESUME_KEYS}
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()

    @property
    def record_level_dp(self) -> bool:
        """Whether each bank trains with DP-SGD (record-level DP)."""
        return self.dp and self.dp_level in ("record", "both")

    @property
    def institution_level_dp(self) -> bool:
        """Whether updates are clipped at the banks and noised on the aggregate (Flower)."""
        return self.dp and self.dp_level in ("institution", "both")

    @property
    def fine_tuning_epochs(self) -> int:
        """Epochs of bank-local fine-tuning the run plans: 0 with ``personalization = "none"``.

        Privacy meaning: each bank's noise is calibrated for its rounds plus these epochs,
        all charged to the same budget.
        """
        return self.personalization_epochs if self.personalization != "none" else 0

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """Hidden layer widths parsed from ``hidden-units`` (e.g. ``"64,32"``)."""
        return tuple(int(part) for part in self.hidden_units.split(",") if part.strip())

    @property
    def state_root(self) -> Path:
        """Where simulated banks keep their own state (ledgers, keys) unless a node says."""
        return Path(self.bank_state_dir) if self.bank_state_dir else Path(self.output_dir) / "banks"

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Back to Flower run-config keys (``-`` separated)."""
        return {key.replace("_", "-"): value for key, value in asdict(self).items()}

    @classmethod
    def from_run_config(cls, run_config: dict) -> RunConfig:
        """Parse and validate a Flower run config; unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown run-config key '{key}'")
            values[name] = _coerce(key, value, type(getattr(cls, name)))
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid key."""
        _require(self.num_server_rounds >= 1, "num-server-rounds", "must be at least 1")
        _require(self.local_epochs >= 1, "local-epochs", "must be at least 1")
        _require(self.batch_size >= 1, "batch-size", "must be at least 1")
        _require(self.max_steps_per_epoch >= 0, "max-steps-per-epoch",
                 "must be 0 (no cap) or at least 1")
        _require(self.learning_rate > 0, "learning-rate", "must be positive")
        _require(self.learning_rate_no_dp > 0, "learning-rate-no-dp", "must be positive")
        _require(0 < self.test_fraction < 1, "test-fraction", "must be between 0 and 1")
        _require(0 < self.fraction_train <= 1, "fraction-train", "must be in (0, 1]")
        _require(self.min_banks >= 1, "min-banks", "must be at least 1")
        _require(self.model in MODEL_KINDS, "model", f"must be one of {', '.join(MODEL_KINDS)}")
        _require(self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}")
        _require(self.update_norm_bound == 0 or self.update_norm_bound >= 1, "update-norm-bound",
                 "must be 0 (off) or at least 1 (a multiple of the median update norm)")
        _require(0 <= self.trimmed_fraction < 0.5, "trimmed-fraction", "must be in [0, 0.5)")
        _require(not (self.secure_aggregation and self.strategy in ROBUST_STRATEGIES), "strategy",
                 f"{self.strategy} needs each bank's update, which 'secure-aggregation' hides "
                 "(SecAgg+ shows only their sum): use fedavg, fedprox or fedadam, or turn "
                 "secure-aggregation off")
        _require(self.accountant in ("rdp", "prv", "gdp"), "accountant", "must be rdp, prv or gdp")
        _require(self.personalization in PERSONALIZATION, "personalization",
                 f"must be one of {', '.join(PERSONALIZATION)}")
        _require(self.personalization_epochs >= 1, "personalization-epochs", "must be at least 1")
        _require(self.personalization_learning_rate > 0, "personalization-learning-rate",
                 "must be positive")
        _require(self.dp_level in DP_LEVELS, "dp-level", f"must be one of {', '.join(DP_LEVELS)}")
        _require(self.dp or self.dp_level == "record", "dp-level",
                 f"'{self.dp_level}' needs DP on (it is a DP guarantee; drop --no-dp)")
        _require(not self.institution_level_dp or self.strategy in INSTITUTION_STRATEGIES,
                 "strategy", f"{self.strategy} cannot carry institution-level DP: the noise is "
                 "calibrated to the weighted mean of clipped updates; use fedavg or fedprox")
        _require(self.institution_noise_multiplier > 0, "institution-noise-multiplier",
                 "must be positive")
        _require(self.institution_clipping_norm > 0, "institution-clipping-norm",
                 "must be positive")
        _require(self.pd_calibration in PD_CALIBRATIONS, "pd-calibration",
                 f"must be one of {', '.join(PD_CALIBRATIONS)}")
        _require(self.privacy_budget_scope in BUDGET_SCOPES, "privacy-budget-scope",
                 "must be run or dataset")
        _require(self.eval_every >= 0, "eval-every", "must be 0 (last round only) or more")
        _require(2 <= self.eval_bins <= MAX_HISTOGRAM_BINS, "eval-bins",
                 f"must be between 2 and {MAX_HISTOGRAM_BINS}")
        _require(self.eval_logit_low < self.eval_logit_high, "eval-logit-low",
                 "must be below eval-logit-high")
        _require(self.secagg_num_shares >= 0, "secagg-num-shares",
                 "must be 0 (follow the consortium's size) or positive")
        _require(self.secagg_reconstruction_threshold > 0, "secagg-reconstruction-threshold",
                 "must be positive")
        _require(self.secagg_max_weight >= 0, "secagg-max-weight",
                 "must be 0 (follow the data) or positive")
        try:
            layers = self.hidden_layers
        except ValueError:
            layers = ()
        _require(self.model == "logistic" or (layers and min(layers) > 0), "hidden-units",
                 "must be comma-separated positive integers, e.g. 64,32")
        if self.dp:
            _require(self.target_epsilon > 0, "target-epsilon", "must be positive")
            _require(0 < self.target_delta < 1, "target-delta", "must be in (0, 1)")
            _require(self.max_grad_norm > 0, "max-grad-norm", "must be positive")
            _require(self.eval_epsilon > 0, "eval-epsilon", "must be positive")


def _require(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ConfigError(f"invalid run config: '{key}' {problem}")


def _coerce(key: str, value: object, kind: type) -> object:
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                return value.lower() == "true"
            return bool(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"invalid run config: '{key}' must be {kind.__name__}, got {value!r}"
        ) from None
