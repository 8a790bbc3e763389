"""A bank's privacy policy: what the bank will do with its data, whatever a run asks.

The coordinator *proposes* a run (its run config); each bank checks the proposal
against its own policy before touching a row and refuses what the policy does not
allow. The policy is a TOML file the bank owns (``bank-policy.toml`` beside its
``node.toml`` in a deployment, written per simulated bank by ``fedrisk simulate``);
the coordinator never sees or sets it. Every key and its privacy meaning:

- ``dp-required``: refuse a run whose training is not record-level DP-SGD (``dp = false``,
  or ``dp-level = "institution"``, where local training is not private).
- ``dp-levels``: the ``dp-level`` values the bank accepts. ``"institution"`` and
  ``"both"`` add Flower's client-side fixed clipping: the bank clips its whole round update
  to ``institution-clipping-norm`` (enforced here, recorded in the ledger), and the
  coordinator adds the noise; the institution-level guarantee rests on the coordinator
  adding it.
- ``max-epsilon-per-run``: the largest training ε (DP-SGD, at the run's δ) one run may
  spend; a run asking ``target-epsilon`` above it is refused.
- ``max-eval-epsilon-per-run``: the largest ε one run may spend on evaluation
  statistics of the held-out split (``eval-epsilon``).
- ``max-epsilon-lifetime``: the cap on everything this bank ever released about this
  table (training, evaluation, published sizes), composed over every run. It holds
  whatever ``privacy-budget-scope`` a run asks for; ``inf`` disables it (simulation).
- ``max-delta``: the largest δ a run may ask for.
- ``require-delta-below-1-over-n``: refuse a δ that is not below 1/n of the bank's
  training rows (a δ ≥ 1/n allows publishing a record outright).
- ``accountants``: the accountants this bank computes ε with (``rdp``, ``prv``). The
  bank plans noise and checks budgets with the largest ε over these and the run's
  ``accountant``, so a run can only make accounting stricter. ``gdp`` is an
  approximation, not an upper bound: a run asking for it is refused.
- ``secure-aggregation-required``: refuse runs without SecAgg+, and any plain
  (unmasked) training request.
- ``min-cohort``: the fewest banks this bank's update may be summed with under
  SecAgg+ (smaller cohorts are refused at setup and at unmasking).
- ``min-secagg-threshold``: the smallest SecAgg+ reconstruction threshold, as a
  fraction of the shares, the bank accepts; must be above 1/2, or a coordinator that
  shows different banks different dropout lists could rebuild one bank's masks.
- ``test-fraction`` and ``split-seed``: the bank's own held-out split; a run asking
  another ``test-fraction`` is refused, and the run's ``seed`` never moves the split.
- ``model-kinds``, ``max-hidden-units``, ``max-hidden-layers``: the architectures the
  bank will train and evaluate.
- ``size-disclosure``: ``"dp"``: the bank's sizes leave only as noisy counts under an
  accounted ε (drawn once per table, recorded in the ledger, reused);
  ``"public"``: the bank declares its exact row counts public.
- ``size-noise-multiplier``: standard deviation of the noise on a published count
  (sensitivity 1) under ``"dp"``.
- ``max-replanned-noise``: when the bank's own ledger shows more of a run spent than the
  run's plan foresaw (a resumed run repeating the round it crashed in, a coordinator
  re-sending rounds), the bank re-plans σ for the rounds left from the budget left; a
  round that would need σ above this multiple of the run's planned σ is refused
  (``privacy-budget``): what is left cannot pay a useful round. It also bounds how many
  ever-noisier rounds a coordinator can extract from one run (each costs at least a
  round at this multiple of σ). ε never exceeds the run's target either way.
- ``approved-apps``: SHA-256 hashes of the Flower app bundles (FABs) this bank runs;
  the bank's executor refuses any other bundle before installing or importing it.

A refusal names the key it violates (:class:`PolicyRefusal`); the bank records it in
its signed ledger and replies ``refused: <key>`` and nothing else.
"""

from __future__ import annotations

import math
import re
import secrets
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from fedrisk.config import DP_LEVELS, RunConfig
from fedrisk.errors import UserError

POLICY_FILENAME = "bank-policy.toml"
SAFE_ACCOUNTANTS = ("rdp", "prv")
SIZE_DISCLOSURES = ("dp", "public")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class PolicyError(UserError, ValueError):
    """The policy file is missing or invalid; the message names the file and the key."""


class PolicyRefusal(Exception):
    """The bank refuses a run or a message; ``key`` is the policy key it would violate.

    Only ``str(refusal)`` (``"refused: <key>"``) ever leaves the bank; ``detail`` is
    for the bank's own log and ledger.
    """

    def __init__(self, key: str, detail: str = "", *, recorded: bool = False) -> None:
        """Refuse on policy ``key``, with a local-only ``detail``.

        ``recorded``: the bank already wrote this refusal into its ledger where it decided
        it (a budget refusal, with the phase it refused), so the reply adds no entry.
        """
        super().__init__(f"refused: {key}")
        self.key = key
        self.detail = detail
        self.recorded = recorded


@dataclass(frozen=True)
class BankPolicy:
    """A bank's privacy policy; field names are the TOML keys with ``-`` → ``_``.

    See the module docstring for the privacy meaning of every field.
    """

    dp_required: bool = True
    dp_levels: tuple[str, ...] = ("record", "both")
    max_epsilon_per_run: float = 3.0
    max_eval_epsilon_per_run: float = 1.0
    max_epsilon_lifetime: float = 10.0
    max_delta: float = 1e-5
    require_delta_below_1_over_n: bool = True
    accountants: tuple[str, ...] = ("rdp",)
    secure_aggregation_required: bool = True
    min_cohort: int = 3
    min_secagg_threshold: float = 0.6
    test_fraction: float = 0.2
    split_seed: int = 0
    model_kinds: tuple[str, ...] = ("mlp", "logistic")
    max_hidden_units: int = 64
    max_hidden_layers: int = 2
    size_disclosure: str = "dp"
    size_noise_multiplier: float = 20.0
    max_replanned_noise: float = 2.0
    approved_apps: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def deployment_default(cls, approved_apps: tuple[str, ...] = ()) -> BankPolicy:
        """The safe default ``consortium init`` writes per bank: DP, SecAgg+, caps, own split.

        The split seed is drawn fresh from the OS entropy pool: it is the bank's.
        """
        return cls(split_seed=secrets.randbelow(2**31), approved_apps=tuple(approved_apps))

    @classmethod
    def simulation_default(cls, split_seed: int = 0, test_fraction: float = 0.2) -> BankPolicy:
        """The policy of a simulated bank: what a study of accuracy against privacy needs.

        Same code path and same rules as a deployed bank, relaxed only where a study on
        public data needs it: non-private baselines and runs without SecAgg+ are allowed,
        ε up to 10 per run, no lifetime cap (the same public table is simulated again and
        again), sizes public. The default ``fedrisk simulate`` satisfies it.
        """
        return cls(dp_required=False, dp_levels=DP_LEVELS, max_epsilon_per_run=10.0,
                   max_eval_epsilon_per_run=10.0,
                   max_epsilon_lifetime=math.inf, secure_aggregation_required=False,
                   min_cohort=2, split_seed=split_seed, test_fraction=test_fraction,
                   max_hidden_units=256, max_hidden_layers=3, size_disclosure="public")

    @classmethod
    def load(cls, path: Path) -> BankPolicy:
        """Read and validate a policy file; unknown or missing-typed keys are errors."""
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise PolicyError(f"{path}: bank policy not found; write one with "
                              "`fedrisk consortium bank-init` or copy the README's") from None
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise PolicyError(f"{path}: cannot read the bank policy: {error}") from None
        return cls.from_dict(document, origin=str(path))

    @classmethod
    def from_dict(cls, document: dict, origin: str = "bank policy") -> BankPolicy:
        """Build a policy from TOML keys (``-`` separated); missing keys take the defaults."""
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in document.items():
            name = key.replace("-", "_")
            if name not in known:
                raise PolicyError(f"{origin}: unknown policy key '{key}'")
            default = getattr(cls(), name)
            values[name] = _coerce(origin, key, value, default)
        policy = cls(**values)
        policy.validate(origin)
        return policy

    def to_toml(self) -> str:
        """The policy as a commented TOML document (what a bank's officer reviews)."""
        lines = ["# fedrisk bank privacy policy: owned by the bank, enforced by the bank.",
                 "# The coordinator proposes runs; runs outside this policy are refused.",
                 "# Every key is documented in the README (\"Bank privacy policy\")."]
        for key, value in asdict(self).items():
            lines.append(f"{key.replace('_', '-')} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def save(self, path: Path) -> Path:
        """Write the policy (0600: it holds the bank's split seed)."""
        from fedrisk.privacy.keys import ensure_private_dir, write_file_with_mode

        path = Path(path)
        ensure_private_dir(path.parent)
        write_file_with_mode(path, self.to_toml().encode(), 0o600, exclusive=False)
        return path

    def with_approved_app(self, fab_hash: str) -> BankPolicy:
        """Return the policy with one more approved app bundle hash."""
        fab_hash = fab_hash.lower()
        if not _HEX_SHA256.fullmatch(fab_hash):
            raise PolicyError(f"'{fab_hash}' is not a SHA-256 hex digest")
        if fab_hash in self.approved_apps:
            return self
        return replace(self, approved_apps=(*self.approved_apps, fab_hash))

    def validate(self, origin: str = "bank policy") -> None:
        """Raise :class:`PolicyError` naming the first invalid key."""
        checks = (
            (bool(self.dp_levels) and set(self.dp_levels) <= set(DP_LEVELS), "dp-levels",
             f"must be a non-empty subset of {list(DP_LEVELS)}"),
            (self.max_epsilon_per_run > 0, "max-epsilon-per-run", "must be positive"),
            (self.max_eval_epsilon_per_run > 0, "max-eval-epsilon-per-run", "must be positive"),
            (self.max_epsilon_lifetime > 0, "max-epsilon-lifetime", "must be positive (or inf)"),
            (0 < self.max_delta < 1, "max-delta", "must be in (0, 1)"),
            (bool(self.accountants) and set(self.accountants) <= set(SAFE_ACCOUNTANTS),
             "accountants", f"must be a non-empty subset of {list(SAFE_ACCOUNTANTS)} "
             "(gdp is an approximation, not an upper bound)"),
            (self.min_cohort >= 2, "min-cohort", "must be at least 2"),
            (0.5 < self.min_secagg_threshold <= 1, "min-secagg-threshold",
             "must be above 0.5 and at most 1"),
            (0 < self.test_fraction < 1, "test-fraction", "must be between 0 and 1"),
            (bool(self.model_kinds), "model-kinds", "must name at least one model kind"),
            (self.max_hidden_units >= 1, "max-hidden-units", "must be at least 1"),
            (self.max_hidden_layers >= 1, "max-hidden-layers", "must be at least 1"),
            (self.size_disclosure in SIZE_DISCLOSURES, "size-disclosure",
             f"must be one of {', '.join(SIZE_DISCLOSURES)}"),
            (self.size_noise_multiplier > 0, "size-noise-multiplier", "must be positive"),
            (self.max_replanned_noise >= 1, "max-replanned-noise",
             "must be at least 1 (a multiple of the run's planned σ)"),
            (all(_HEX_SHA256.fullmatch(h) for h in self.approved_apps), "approved-apps",
             "must be SHA-256 hex digests (lowercase)"),
        )
        for ok, key, problem in checks:
            if not ok:
                raise PolicyError(f"{origin}: '{key}' {problem}")

    def accountants_for(self, config: RunConfig) -> tuple[str, ...]:
        """The accountants budgets are decided with: the bank's own plus the run's."""
        return tuple(dict.fromkeys((*self.accountants, config.accountant)))

    def check_run(self, config: RunConfig, n_train: int | None = None) -> None:
        """Raise :class:`PolicyRefusal` for the first rule ``config`` breaks.

        ``n_train`` (the bank's training rows) enables the δ < 1/n rule. The lifetime
        cap needs the bank's ledger and is checked where noise is planned.
        """
        for key, allowed, detail in self._rules(config, n_train):
            if not allowed:
                raise PolicyRefusal(key, detail)

    def _rules(self, config: RunConfig, n_train: int | None):
        layers = config.hidden_layers if config.model != "logistic" else ()
        yield ("dp-required", config.record_level_dp or not self.dp_required,
               "the run asks for training without record-level DP-SGD")
        yield ("dp-levels", config.dp_level in self.dp_levels,
               f"dp-level '{config.dp_level}' not in {list(self.dp_levels)}")
        if config.dp:
            yield ("max-epsilon-per-run", config.target_epsilon <= self.max_epsilon_per_run,
                   f"target-epsilon {config.target_epsilon:g} > {self.max_epsilon_per_run:g}")
            yield ("max-eval-epsilon-per-run",
                   config.eval_epsilon <= self.max_eval_epsilon_per_run,
                   f"eval-epsilon {config.eval_epsilon:g} > {self.max_eval_epsilon_per_run:g}")
            yield ("max-delta", config.target_delta <= self.max_delta,
                   f"target-delta {config.target_delta:g} > {self.max_delta:g}")
            yield ("require-delta-below-1-over-n",
                   not self.require_delta_below_1_over_n or n_train is None
                   or config.target_delta < 1 / n_train,
                   f"target-delta {config.target_delta:g} is not below 1/n")
            yield ("accountants", config.accountant in SAFE_ACCOUNTANTS,
                   f"accountant '{config.accountant}' is not an upper bound")
        yield ("secure-aggregation-required",
               config.secure_aggregation or not self.secure_aggregation_required,
               "the run asks to aggregate without SecAgg+")
        yield ("test-fraction", math.isclose(config.test_fraction, self.test_fraction),
               f"test-fraction {config.test_fraction:g} != {self.test_fraction:g}")
        yield ("model-kinds", config.model in self.model_kinds,
               f"model '{config.model}' not in {list(self.model_kinds)}")
        yield ("max-hidden-units", max(layers, default=0) <= self.max_hidden_units,
               f"hidden-units '{config.hidden_units}' wider than {self.max_hidden_units}")
        yield ("max-hidden-layers", len(layers) <= self.max_hidden_layers,
               f"hidden-units '{config.hidden_units}' deeper than {self.max_hidden_layers}")


def _coerce(origin: str, key: str, value: object, default: object) -> object:
    kind = type(default)
    try:
        if kind is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return tuple(value)
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is str and isinstance(value, str):
            return value
        raise TypeError
    except TypeError:
        expected = "a list of strings" if kind is tuple else kind.__name__
        raise PolicyError(f"{origin}: '{key}' must be {expected}, got {value!r}") from None


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
