"""The egress policy: exactly what a bank may send to the coordinator, stage by stage.

A reply passes only if every record in it is one the protocol needs and every
value has the agreed form:

- model parameters: the agreed model's arrays, same count, shapes and dtype
  (float32), serialized canonically (no bytes hidden after an array);
- scalar metrics whose keys are on an allowlist (counts, loss, AUC/Brier/KS, ε,
  δ, DP settings, score-histogram bins with a bounded index); the only string is
  the bank's own public id, and the only hex string is the bank's ledger head;
- under SecAgg+, the protocol's own records for the stage being run: public
  keys, encrypted key shares, the masked vector (integer arrays of the model's
  shapes plus one weight factor), and key shares for unmasking.
Anything else (an extra array or record, a string, a list, bytes, a reshaped
array) is a violation. What no shape check can see: information hidden in the
*values* of correctly shaped parameters. Record-level DP bounds what those
values reveal, and under SecAgg+ the coordinator only ever sees their sum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

FIT_METRICS = frozenset({
    "bank_id", "n_train", "train_loss", "dp", "epsilon", "epsilon_lifetime", "delta",
    "noise_multiplier", "sample_rate", "steps", "ledger_head", "n_grades", "prior_default_rate",
})
EVALUATE_METRICS = frozenset({"bank_id", "n_test", "auc", "brier", "ks", "personalized_auc",
                              "personalized_brier", "epsilon", "epsilon_lifetime",
                              "epsilon_eval", "epsilon_eval_lifetime", "eval_noise_multiplier"})
# Counts per bin: score histograms of the global and the personalized model, and the grade
# head's error histogram. Under DP they are noisy integers and may be negative.
HISTOGRAM_KEY = re.compile(r"(?:(?:personalized_)?hist_(?:pos|neg)|grade_error)_(\d{3})")
GRADE_METRICS = frozenset({"grade_spearman", "grade_accuracy", "grade_within_one"})
GRADE_LEVEL_KEY = re.compile(r"grade_acc_(\d{2})")
STATUS_MESSAGES = frozenset({"", "Success"})
MAX_SECAGG_BYTES = 4096  # a public key or an encrypted key share is a few hundred bytes


@dataclass(frozen=True)
class EgressPolicy:
    """The agreed shapes and identities a bank's replies are checked against.

    Attributes:
        bank_id: the bank's public id; the only free string it may send.
        parameter_shapes: shapes of the agreed model's arrays, in order.
        histogram_bins: number of score-histogram bins per class.
        max_banks: upper bound on SecAgg+ neighbours (lists longer than this are rejected).
        ledger_head: the bank's current ledger head hash (the only hex string allowed).

    """

    bank_id: str
    parameter_shapes: tuple[tuple[int, ...], ...]
    histogram_bins: int
    max_banks: int = 1000
    ledger_head: str | None = None
    n_grades: int = 0
    prior_default_rate: float = 0.5


def inspect_reply(content: RecordDict, message_type: str, secagg_stage: str | None,
                  policy: EgressPolicy) -> list[str]:
    """Return every violation of ``policy`` in a reply's content (empty: it may leave)."""
    if secagg_stage is not None:
        return _inspect_secagg(content, secagg_stage, policy)
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
    return [f"message type '{message_type}' may not leave the bank"]


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
    problems += _check_counts(content.metric_records.get("fitres.num_examples"),
                              {"num_examples"}, "fitres.num_examples")
    problems += _check_metrics(content.config_records.get("fitres.metrics"), FIT_METRICS,
                               policy, "fitres.metrics")
    return problems + _check_status(content, "fitres")


def _inspect_evaluate(content: RecordDict, policy: EgressPolicy) -> list[str]:
    problems = _expect_records(
        content, configs={"evaluateres.metrics", "evaluateres.status"},
        metrics={"evaluateres.loss", "evaluateres.num_examples"})
    problems += _check_counts(content.metric_records.get("evaluateres.loss"), {"loss"},
                              "evaluateres.loss")
    problems += _check_counts(content.metric_records.get("evaluateres.num_examples"),
                              {"num_examples"}, "evaluateres.num_examples")
    problems += _check_metrics(content.config_records.get("evaluateres.metrics"),
                               EVALUATE_METRICS, policy, "evaluateres.metrics")
    return problems + _check_status(content, "evaluateres")


def _inspect_secagg(content: RecordDict, stage: str, policy: EgressPolicy) -> list[str]:
    configs = content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None:
        return [f"SecAgg+ {stage} reply lacks its protocol record"]
    if stage == Stage.COLLECT_MASKED_VECTORS:
        problems = _inspect_fit(content, policy, with_parameters=False,
                                extra_configs=frozenset({RECORD_KEY_CONFIGS}))
        return problems + _check_masked(configs, policy)
    problems = _expect_records(content, configs={RECORD_KEY_CONFIGS})
    expected = {
        Stage.SETUP: {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2},
        Stage.SHARE_KEYS: {Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST},
        Stage.UNMASK: {Key.NODE_ID_LIST, Key.SHARE_LIST},
    }.get(stage)
    if expected is None:
        return [f"unknown SecAgg+ stage '{stage}'"]
    if set(configs) != expected:
        problems.append(f"SecAgg+ {stage} reply carries {sorted(configs)}, "
                        f"expected {sorted(expected)}")
        return problems
    for key, value in configs.items():
        problems += _check_secagg_value(stage, key, value, policy)
    return problems


def _check_secagg_value(stage: str, key: str, value: object, policy: EgressPolicy) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if len(values) > policy.max_banks:
        return [f"SecAgg+ {stage} '{key}' has {len(values)} items (> {policy.max_banks} banks)"]
    if key in (Key.DESTINATION_LIST, Key.NODE_ID_LIST):
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        return [] if ok else [f"SecAgg+ {stage} '{key}' must be node ids"]
    ok = all(isinstance(v, bytes) and len(v) <= MAX_SECAGG_BYTES for v in values)
    return [] if ok else [f"SecAgg+ {stage} '{key}' must be short byte strings "
                          f"(≤ {MAX_SECAGG_BYTES} bytes each)"]


def _check_masked(configs: ConfigRecord, policy: EgressPolicy) -> list[str]:
    from flwr.common import bytes_to_ndarray

    if set(configs) != {Key.MASKED_PARAMETERS}:
        return [f"SecAgg+ masked-vector reply carries {sorted(configs)}"]
    masked = configs[Key.MASKED_PARAMETERS]
    expected = [(1,), *policy.parameter_shapes]
    if not isinstance(masked, list) or len(masked) != len(expected):
        return [f"masked vector must hold {len(expected)} arrays (weight factor + model)"]
    problems = []
    for index, (blob, shape) in enumerate(zip(masked, expected, strict=True)):
        try:
            array = bytes_to_ndarray(blob)
        except Exception:  # noqa: BLE001 - any undecodable blob is a violation
            problems.append(f"masked array {index} is not a numpy array")
            continue
        if array.shape != shape or array.dtype.kind not in "iu":
            problems.append(f"masked array {index} has shape {array.shape} dtype {array.dtype}, "
                            f"expected integers of shape {shape}")
    return problems


def _expect_records(content: RecordDict, arrays: set[str] = frozenset(),
                    configs: set[str] = frozenset(), metrics: set[str] = frozenset()) -> list[str]:
    problems = []
    for kind, present, allowed in (("array", content.array_records, arrays),
                                   ("config", content.config_records, configs),
                                   ("metric", content.metric_records, metrics)):
        extra = sorted(set(present) - set(allowed))
        if extra:
            problems.append(f"unexpected {kind} record(s) {extra}")
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


def _check_counts(record: MetricRecord | None, keys: set[str], name: str) -> list[str]:
    if record is None or set(record) != keys:
        return [f"{name} must hold exactly {sorted(keys)}"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in record.values()):
        return [f"{name} must hold numbers"]
    return []


def _check_metrics(record: ConfigRecord | None, allowed: frozenset[str], policy: EgressPolicy,
                   name: str) -> list[str]:
    if record is None:
        return [f"{name} is missing"]
    problems = []
    for key, value in record.items():
        problems += _check_metric(key, value, allowed, policy, name)
    return problems


def _check_metric(key: str, value: object, allowed: frozenset[str], policy: EgressPolicy,
                  name: str) -> list[str]:
    histogram = HISTOGRAM_KEY.fullmatch(key)
    if histogram and allowed is EVALUATE_METRICS:
        in_range = int(histogram.group(1)) < policy.histogram_bins
        is_count = isinstance(value, int) and not isinstance(value, bool)
        return [] if in_range and is_count else [f"{name}: histogram bin '{key}' is invalid"]
    if allowed is EVALUATE_METRICS and policy.n_grades:
        level = GRADE_LEVEL_KEY.fullmatch(key)
        if key in GRADE_METRICS or (level and int(level.group(1)) < policy.n_grades):
            return [] if isinstance(value, float) else [f"{name}: '{key}' must be a number"]
    if key not in allowed:
        return [f"{name}: metric '{key}' is not on the allowlist"]
    if key == "bank_id":
        return [] if value == policy.bank_id else [f"{name}: bank_id is not this bank's id"]
    if key in ("n_grades", "prior_default_rate"):
        agreed = getattr(policy, key)
        return [] if value == agreed else [f"{name}: {key} is not the contract's"]
    if key == "ledger_head":
        return [] if value == policy.ledger_head else [f"{name}: ledger_head is not the "
                                                       "bank's ledger head"]
    if isinstance(value, bool | int | float):
        return []
    return [f"{name}: metric '{key}' must be a scalar number, got {type(value).__name__}"]


def _check_status(content: RecordDict, prefix: str) -> list[str]:
    status = content.config_records.get(f"{prefix}.status")
    if status is None or set(status) != {"code", "message"}:
        return [f"{prefix}.status must hold exactly code and message"]
    if not isinstance(status["code"], int) or status["message"] not in STATUS_MESSAGES:
        return [f"{prefix}.status carries a free-form message"]
    return []
