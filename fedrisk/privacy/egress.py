"""The egress policy: exactly what a bank may send to the coordinator, message by message.

A reply passes only if every record in it is one the protocol needs and every value is
the one the bank's own state determines, or lies within its bounds:

- model parameters: the agreed model's arrays, same count, shapes and dtype (float32),
  serialized canonically (no bytes hidden after an array);
- scalar metrics on an allowlist, each with its rule: the bank's own id, ledger head,
  contract facts and DP facts (ε, δ, σ, sampling rate, steps: equal to the bank's latest
  ``privacy_spend`` entry of the run); counts as integers in their range (histogram
  counts in [0, n_test]); fractions in [0, 1] (NaN only where a statistic is undefined,
  and only a NaN without payload); everything else a finite number; ``dp`` a bool;
- the status: code 0 and no free text;
- under SecAgg+, the protocol's own record for the stage, checked against the bank's
  protocol state (:mod:`fedrisk.privacy.secagg_replies`);
- reply metadata: the identity fields a reply to the request has (run, nodes, tasks,
  group, message type); the guard stamps the times itself.
Anything else (an extra array or record, a string, a list, bytes, a reshaped array, an
unknown key, a value out of bounds) is a violation. What no check can see: information
hidden in the *values* of a correctly shaped update; record-level DP bounds what those
values reveal, and under SecAgg+ the coordinator only sees their sum.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage

from fedrisk.privacy.secagg_replies import SecAggExchange, inspect_secagg_record

# What a fit reply may carry (no training loss: an un-noised statistic of the training rows).
FIT_METRICS = frozenset({
    "bank_id", "n_train", "dp", "epsilon", "epsilon_lifetime", "delta",
    "noise_multiplier", "sample_rate", "steps", "ledger_head", "n_grades", "prior_default_rate",
})
LEDGER_FIT_METRICS = frozenset({"epsilon", "epsilon_lifetime", "delta", "noise_multiplier",
                                "sample_rate", "steps"})
# What an evaluation reply may carry (statistics of the held-out split) and their bounds.
EVALUATE_METRICS = frozenset({"bank_id", "n_test", "auc", "brier", "ks", "personalized_auc",
                              "personalized_brier", "epsilon", "epsilon_lifetime",
                              "ledger_id", "ledger_entries", "ledger_head",
                              "epsilon_eval", "epsilon_eval_lifetime", "eval_noise_multiplier"})
# Counts per bin: score histograms of the global and the personalized model, and the grade
# head's error histogram. Under DP they are noisy integers and may be negative.
HISTOGRAM_KEY = re.compile(r"(?:(?:personalized_)?hist_(?:pos|neg)|grade_error)_(\d{3})")
GRADE_METRICS = frozenset({"grade_spearman", "grade_accuracy", "grade_within_one"})
GRADE_LEVEL_KEY = re.compile(r"grade_acc_(\d{2})")
FRACTIONS = frozenset({"auc", "brier", "ks", "personalized_auc", "personalized_brier",
                       "grade_accuracy", "grade_within_one"})
STATUS_MESSAGES = frozenset({"", "Success"})
REPLY_IDENTITY = ("run_id", "message_id", "src_node_id", "dst_node_id", "reply_to_message_id",
                  "group_id", "message_type", "src_task_id", "dst_task_id", "delivered_at")
_PLAIN_NAN = struct.unpack("<Q", struct.pack("<d", math.nan))[0]

Rule = Callable[[object], bool]


@dataclass(frozen=True)
class EgressPolicy:
    """What the bank knows about itself that its replies are checked against.

    Attributes:
        bank_id: the bank's public id; the only free string it may send.
        parameter_shapes: shapes of the agreed model's arrays, in order.
        histogram_bins: number of score-histogram bins per class.
        ledger_head: the bank's current ledger head hash (the only hex string allowed).
        n_grades / prior_default_rate: the contract's grade count and prior (public).
        n_test: the bank's held-out rows: bounds every count of held-out rows.
        noise_margin: how far a DP-noised count may legitimately stray outside
            [0, n_test] (8 noise standard deviations of the run's evaluation release).
        dp: whether this run trains with DP (the ``dp`` metric must say so).
        spend: the bank's latest ``privacy_spend`` entry of this run (None without one):
            the DP figures a reply reports must be exactly these.

    """

    bank_id: str
    parameter_shapes: tuple[tuple[int, ...], ...]
    histogram_bins: int
    ledger_head: str | None = None
    ledger_entries: int | None = None
    ledger_id: str | None = None
    n_grades: int = 0
    prior_default_rate: float = 0.5
    n_test: int = 0
    noise_margin: int = 0
    dp: bool = False
    spend: Mapping[str, object] | None = None


def evaluated_size_bound(policy: EgressPolicy) -> int:
    """Largest ``num_examples`` an honest evaluate reply may carry.

    Under DP it is the sum of the released score histograms (``2 × histogram_bins`` noisy
    counts), whose noise standard deviation is √(2 × bins) times one count's: the bound is
    ``n_test`` plus 8 of those (a per-count margin alone blocked about 3% of honest replies).
    """
    return policy.n_test + policy.noise_margin * math.ceil(math.sqrt(2 * policy.histogram_bins))


def inspect_reply(content: RecordDict, message_type: str, policy: EgressPolicy,
                  secagg: SecAggExchange | None = None) -> list[str]:
    """Return every violation of ``policy`` in a reply's content (empty: it may leave).

    ``secagg`` is the SecAgg+ request this content answers, with the bank's protocol
    state after it (None for a message outside SecAgg+).
    """
    if secagg is not None:
        return _inspect_secagg(content, secagg, policy)
    if message_type == "train":
        return _inspect_fit(content, policy, with_parameters=True)
    if message_type == "evaluate":
        return _inspect_evaluate(content, policy)
    if message_type == "get_parameters":
        return (_expect_records(content, arrays={"getparametersres.parameters"},
                                configs={"getparametersres.status"})
                + _check_parameters(content.array_records.get("getparametersres.parameters"),
                                    policy)
                + _check_status(content, "getparametersres"))
    return [f"message type '{message_type[:40]}' may not leave the bank"]


def inspect_metadata(request: Message, reply: Message) -> list[str]:
    """Identity fields of ``reply`` that differ from those of a reply to ``request``."""
    expected = Message(RecordDict(), reply_to=request).metadata
    return [f"reply metadata '{name}' is not the request's" for name in REPLY_IDENTITY
            if getattr(reply.metadata, name) != getattr(expected, name)]


def _inspect_fit(content: RecordDict, policy: EgressPolicy, with_parameters: bool,
                 extra_configs: frozenset[str] = frozenset()) -> list[str]:
    problems = _expect_records(
        content, arrays={"fitres.parameters"},
        configs={"fitres.metrics", "fitres.status", *extra_configs},
        metrics={"fitres.num_examples"})
    arrays = content.array_records.get("fitres.parameters")
    if with_parameters:
        problems += _check_parameters(arrays, policy)
    elif arrays is not None and len(arrays) > 0:
        problems.append("fitres.parameters must be empty under SecAgg+ (masked vector only)")
    metrics = content.config_records.get("fitres.metrics")
    n_train = metrics.get("n_train") if metrics is not None else None
    problems += _check_record(content.metric_records.get("fitres.num_examples"),
                              {"num_examples": _equal(n_train)}.get, "fitres.num_examples",
                              required={"num_examples"})
    problems += _check_record(metrics, lambda key: _fit_rule(key, policy), "fitres.metrics")
    return problems + _check_status(content, "fitres")


def _inspect_evaluate(content: RecordDict, policy: EgressPolicy) -> list[str]:
    problems = _expect_records(
        content, configs={"evaluateres.metrics", "evaluateres.status"},
        metrics={"evaluateres.loss", "evaluateres.num_examples"})
    problems += _check_record(content.metric_records.get("evaluateres.loss"),
                              {"loss": _number(low=0.0)}.get, "evaluateres.loss",
                              required={"loss"})
    problems += _check_record(content.metric_records.get("evaluateres.num_examples"),
                              {"num_examples": _count(0, evaluated_size_bound(policy))}.get,
                              "evaluateres.num_examples", required={"num_examples"})
    problems += _check_record(content.config_records.get("evaluateres.metrics"),
                              lambda key: _evaluation_rule(key, policy), "evaluateres.metrics")
    return problems + _check_status(content, "evaluateres")


def _fit_rule(key: str, policy: EgressPolicy) -> Rule | None:
    """The rule one fit metric must follow; None if it may not leave."""
    if key not in FIT_METRICS:
        return None
    if key in LEDGER_FIT_METRICS:
        return _spent(policy, key)
    return {"bank_id": _equal(policy.bank_id), "ledger_head": _equal(policy.ledger_head),
            "n_grades": _equal(policy.n_grades),
            "prior_default_rate": _equal(policy.prior_default_rate),
            "dp": _equal(policy.dp), "n_train": _count(0, math.inf)}.get(key, _number(low=0.0))


def _evaluation_rule(key: str, policy: EgressPolicy) -> Rule | None:
    """The rule one evaluation metric must follow; None if it may not leave."""
    histogram = HISTOGRAM_KEY.fullmatch(key)
    if histogram and int(histogram.group(1)) < policy.histogram_bins:
        return _count(-policy.noise_margin, policy.n_test + policy.noise_margin)
    level = GRADE_LEVEL_KEY.fullmatch(key)
    if policy.n_grades and level and int(level.group(1)) < policy.n_grades:
        return _fraction(0.0)
    if policy.n_grades and key in GRADE_METRICS:
        return _fraction(-1.0 if key == "grade_spearman" else 0.0)
    if key not in EVALUATE_METRICS:
        return None
    if key in ("epsilon", "epsilon_lifetime"):
        return _spent(policy, key)
    if key in FRACTIONS:
        return _fraction(0.0)
    return {"bank_id": _equal(policy.bank_id), "n_test": _equal(policy.n_test),
            "ledger_head": _equal(policy.ledger_head), "ledger_id": _equal(policy.ledger_id),
            "ledger_entries": _equal(policy.ledger_entries)}.get(key, _number())


def _equal(expected: object) -> Rule:
    return lambda value: type(value) is type(expected) and value == expected


def _spent(policy: EgressPolicy, key: str) -> Rule:
    spend = policy.spend or {}
    return _equal(spend[key]) if key in spend else (lambda value: False)


def _count(low: float, high: float) -> Rule:
    return lambda value: type(value) is int and low <= value <= high


def _number(low: float = -math.inf, high: float = math.inf) -> Rule:
    return lambda value: (type(value) in (int, float) and math.isfinite(value)
                          and low <= value <= high)


def _fraction(low: float) -> Rule:
    """A number in [low, 1], or NaN (an undefined statistic) without payload bits."""
    return lambda value: _number(low, 1.0)(value) or (type(value) is float and _plain_nan(value))


def _plain_nan(value: float) -> bool:
    return struct.unpack("<Q", struct.pack("<d", value))[0] & ~(1 << 63) == _PLAIN_NAN


def _check_record(record: ConfigRecord | MetricRecord | None,
                  rule_for: Callable[[str], Rule | None], name: str,
                  required: set[str] = frozenset()) -> list[str]:
    if record is None:
        return [f"{name} is missing"]
    problems = [f"{name} lacks '{key}'" for key in sorted(required - set(record))]
    for key, value in record.items():
        rule = rule_for(key)
        if rule is None:
            problems.append(f"{name}: '{key[:40]}' is not on the allowlist")
        elif not rule(value):
            problems.append(f"{name}: '{key}' is not what the bank's state allows "
                            f"(a {type(value).__name__})")
    return problems


def _inspect_secagg(content: RecordDict, secagg: SecAggExchange,
                    policy: EgressPolicy) -> list[str]:
    record = content.config_records.get(RECORD_KEY_CONFIGS)
    if record is None:
        return [f"SecAgg+ {secagg.stage[:40]} reply lacks its protocol record"]
    if secagg.stage == Stage.COLLECT_MASKED_VECTORS:
        problems = _inspect_fit(content, policy, with_parameters=False,
                                extra_configs=frozenset({RECORD_KEY_CONFIGS}))
        counts = content.metric_records.get("fitres.num_examples")
        examples = counts.get("num_examples") if counts is not None else None
        return problems + inspect_secagg_record(dict(record), secagg, policy.parameter_shapes,
                                                examples)
    return (_expect_records(content, configs={RECORD_KEY_CONFIGS})
            + inspect_secagg_record(dict(record), secagg, policy.parameter_shapes))


def _expect_records(content: RecordDict, arrays: set[str] = frozenset(),
                    configs: set[str] = frozenset(), metrics: set[str] = frozenset()) -> list[str]:
    problems = []
    for kind, present, allowed in (("array", content.array_records, arrays),
                                   ("config", content.config_records, configs),
                                   ("metric", content.metric_records, metrics)):
        extra = sorted(set(present) - set(allowed))
        if extra:
            problems.append(f"unexpected {kind} record(s) {[e[:40] for e in extra[:5]]}")
    return problems


def _check_parameters(arrays: ArrayRecord | None, policy: EgressPolicy) -> list[str]:
    if arrays is None:
        return ["model parameters are missing"]
    if len(arrays) != len(policy.parameter_shapes):
        return [f"{len(arrays)} arrays sent, the agreed model has {len(policy.parameter_shapes)}"]
    problems = []
    for index, (array, shape) in enumerate(zip(arrays.values(), policy.parameter_shapes,
                                               strict=True)):
        problems += _check_array(index, array, shape)
    return problems


def _check_array(index: int, array: object, shape: tuple[int, ...]) -> list[str]:
    from flwr.common import ndarray_to_bytes

    try:
        values = array.numpy()
    except Exception:  # noqa: BLE001 - anything that is not a numpy array is a violation
        return [f"array {index} is not a numpy array"]
    if values.shape != shape or values.dtype != np.float32:
        return [f"array {index} has shape {values.shape} dtype {values.dtype}, "
                f"expected float32 {shape}"]
    if ndarray_to_bytes(values) != array.data:
        return [f"array {index} carries bytes beyond its values"]
    return []


def _check_status(content: RecordDict, prefix: str) -> list[str]:
    status = content.config_records.get(f"{prefix}.status")
    if status is None or set(status) != {"code", "message"}:
        return [f"{prefix}.status must hold exactly code and message"]
    if status["code"] != 0 or type(status["code"]) is not int:
        return [f"{prefix}.status code is not OK (0)"]
    if status["message"] not in STATUS_MESSAGES:
        return [f"{prefix}.status carries a free-form message"]
    return []
