"""Record-level DP accounting: composition over rounds, calibration, refusal."""

import math
import time

import pytest
from opacus.accountants import RDPAccountant

from fedrisk.privacy.accounting import (
    DPSchedule,
    PrivacyBudgetExceeded,
    _calibrate,
    check_budget,
    compose_epsilon,
    plan_schedule,
    steps_per_epoch,
)

DELTA = 1e-5


def test_round_by_round_composition_equals_one_accountant_over_all_steps():
    schedule = plan_schedule(1540, 64, 1, 5, 3.0, DELTA)
    history, epsilons = [], []
    for _ in range(5):
        history.append((schedule.noise_multiplier, schedule.sample_rate, schedule.steps_per_round))
        epsilons.append(compose_epsilon(history, DELTA))
    one_accountant = RDPAccountant()
    for _ in range(5 * schedule.steps_per_round):
        one_accountant.step(noise_multiplier=schedule.noise_multiplier,
                            sample_rate=schedule.sample_rate)
    assert epsilons[-1] == pytest.approx(one_accountant.get_epsilon(DELTA), rel=1e-9)
    assert all(b > a for a, b in zip(epsilons, epsilons[1:], strict=False))
    assert 2.9 <= epsilons[-1] <= 3.0


def test_a_bank_at_its_budget_refuses_the_next_round():
    schedule = plan_schedule(1540, 64, 1, 3, 1.0, DELTA)
    step = (schedule.noise_multiplier, schedule.sample_rate, schedule.steps_per_round)
    history = []
    for _ in range(3):
        check_budget(history, schedule, 1.0, DELTA)
        history.append(step)
    with pytest.raises(PrivacyBudgetExceeded, match="budget exhausted"):
        check_budget(history, schedule, 1.0, DELTA)


def test_calibration_accounts_for_spend_of_earlier_runs():
    fresh = plan_schedule(1540, 64, 1, 5, 3.0, DELTA)
    earlier = [(fresh.noise_multiplier, fresh.sample_rate, 2 * fresh.steps_per_round)]
    second = plan_schedule(1540, 64, 1, 5, 3.0, DELTA, prior_history=earlier)
    assert second.noise_multiplier > fresh.noise_multiplier
    total = [*earlier, (second.noise_multiplier, second.sample_rate, 5 * second.steps_per_round)]
    assert compose_epsilon(total, DELTA) <= 3.0
    exhausted = [(fresh.noise_multiplier, fresh.sample_rate, 5 * fresh.steps_per_round)]
    with pytest.raises(PrivacyBudgetExceeded):
        plan_schedule(1540, 64, 1, 5, 2.5, DELTA, prior_history=exhausted)


def test_zero_noise_is_infinite_epsilon():
    assert compose_epsilon([(0.0, 0.04, 10)], DELTA) == float("inf")


def test_composition_merges_repeated_mechanisms_exactly_whatever_the_history_length():
    schedule = plan_schedule(1540, 64, 1, 5, 3.0, DELTA)
    step = (schedule.noise_multiplier, schedule.sample_rate, schedule.steps_per_round)
    history = [step] * 300 + [(7.0, 1.0, 1)] * 3  # 300 rounds and 3 evaluation releases
    start = time.perf_counter()
    epsilon = compose_epsilon(history, DELTA)
    elapsed = time.perf_counter() - start
    one_accountant = RDPAccountant()
    one_accountant.history = [(step[0], step[1], 300 * step[2]), (7.0, 1.0, 3)]
    assert epsilon == pytest.approx(one_accountant.get_epsilon(DELTA), rel=1e-9)
    assert compose_epsilon(history[::-1], DELTA) == epsilon  # order does not matter
    assert elapsed < 1.0  # was about 60 ms per entry: 18 s for this history
    prv = compose_epsilon(history[:40] + history[-1:], DELTA, "prv")
    tracker = RDPAccountant()  # PRV of the merged history is an upper bound near RDP's
    tracker.history = [(step[0], step[1], 40 * step[2]), (7.0, 1.0, 1)]
    assert 0 < prv <= tracker.get_epsilon(DELTA)


def test_a_plan_is_computed_once_per_process_for_the_same_inputs():
    first = plan_schedule(1777, 64, 2, 5, 2.5, DELTA, personalization_epochs=1)
    misses = _calibrate.cache_info().misses
    again = plan_schedule(1777, 64, 2, 5, 2.5, DELTA, personalization_epochs=1)
    assert again == first and _calibrate.cache_info().misses == misses
    other = plan_schedule(2400, 64, 2, 5, 2.5, DELTA, personalization_epochs=1)
    assert _calibrate.cache_info().misses == misses + 1 and other != first


def epoch_noise(schedule: DPSchedule, n_records: int) -> float:
    """Std per coordinate of the noise one local epoch adds to the model (lr 1, C 1).

    Each step adds σ·C over the expected batch q·n to the averaged gradient; an epoch's
    1/q independent steps add up to sqrt(1/q) times that.
    """
    steps = 1 / schedule.sample_rate
    return math.sqrt(steps) * schedule.noise_multiplier / (schedule.sample_rate * n_records)


def test_a_step_cap_keeps_epsilon_and_makes_large_banks_less_noisy_not_more():
    """Beyond batch × cap records a bank samples larger batches, not more steps.

    Without the cap a larger bank takes proportionally more steps, each with somewhat
    less noise: the noise an epoch adds to the model *grows* with the bank. With the cap
    the steps and σ stay fixed and the batch grows: the noise falls as 1/n, at the same ε.
    """
    sizes = (4_000, 16_000, 64_000)
    capped = [plan_schedule(n, 256, 1, 20, 3.0, DELTA, max_steps_per_epoch=8) for n in sizes]
    uncapped = [plan_schedule(n, 256, 1, 20, 3.0, DELTA) for n in sizes]
    for n, schedule in zip(sizes, capped, strict=True):
        assert schedule.sample_rate == pytest.approx(1 / 8) and schedule.steps_per_round == 8
        assert steps_per_epoch(n, 256, 8) == 8 < steps_per_epoch(n, 256)
        history = [(schedule.noise_multiplier, schedule.sample_rate, 8)] * 20
        assert 2.95 <= compose_epsilon(history, DELTA) <= 3.0
    noise = [epoch_noise(s, n) for s, n in zip(capped, sizes, strict=True)]
    fixed = [epoch_noise(s, n) for s, n in zip(uncapped, sizes, strict=True)]
    assert fixed[2] > 1.3 * fixed[0]
    assert noise[0] > 3.9 * noise[1] and noise[1] > 3.9 * noise[2]
    assert noise[2] < fixed[2] / 40
    # a bank below batch × cap records is unchanged by the cap
    assert plan_schedule(1540, 256, 1, 20, 3.0, DELTA, max_steps_per_epoch=8) == plan_schedule(
        1540, 256, 1, 20, 3.0, DELTA)
