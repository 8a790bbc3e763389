"""The fast DP-SGD path: per-record clipping, Poisson sampling and noise, checked directly.

The audit's canary check (tests/test_audit.py) runs a logistic model; these tests check
the same properties on the banks' real network (MLP body, PD head and grade head trained
jointly), against per-record gradients computed one record at a time.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2, norm
from torch import nn

from fedrisk.models import ModelSpec, build_model
from fedrisk.privacy.accounting import DPSchedule, steps_per_epoch
from fedrisk.privacy.clipping import LinearRecordGradients, UnsupportedNetwork
from fedrisk.privacy.dpsgd import (
    TrainingRows,
    TrainingSettings,
    add_noise,
    bernoulli_positions,
    poisson_batch,
    train_locally,
)

SPEC = ModelSpec("mlp", 6, (8, 5), 0.2, 4)
Z = norm.isf(1e-4)  # two-sided bands at a false alarm rate of 2e-4 per assertion


def bank_rows(n: int = 40, seed: int = 0) -> tuple[nn.Module, TrainingRows]:
    """A two-hidden-layer network with a grade head and records of very different scales."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, SPEC.n_features)).astype(np.float32)
    features[::5] *= 200  # every fifth record has a huge gradient: it must be clipped
    labels = (rng.random(n) < 0.3).astype(np.float32)
    grades = rng.integers(-1, SPEC.n_grades, n)  # -1: grade unknown
    model = build_model(SPEC, seed=1)
    return model, TrainingRows(model, features, labels, grades)


def one_record_gradients(model: nn.Module, rows: TrainingRows,
                         parameters: list[nn.Parameter]) -> torch.Tensor:
    """Reference: each record's own gradient, one backward pass per record."""
    gradients = []
    for i in range(len(rows)):
        loss = rows.record_losses(torch.tensor([i])).sum()
        gradients.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, parameters)]))
    return torch.stack(gradients)


def clipped_sum(model: nn.Module, rows: TrainingRows, batch: torch.Tensor, bound: float
                ) -> tuple[torch.Tensor, torch.Tensor, list[nn.Parameter]]:
    with LinearRecordGradients(model) as per_record:
        norms = per_record.clipped_sum(rows.record_losses(batch), bound)
        return per_record.flat_grad.clone(), norms, per_record.parameters


def test_clipped_sum_equals_the_sum_of_each_records_clipped_gradient():
    model, rows = bank_rows()
    bound = 0.5
    got, norms, parameters = clipped_sum(model, rows, torch.arange(len(rows)), bound)
    reference = one_record_gradients(model, rows, parameters)
    reference_norms = reference.norm(dim=1)
    factors = (bound / (reference_norms + 1e-6)).clamp(max=1.0)
    assert (factors < 1).sum() >= 8 and (factors == 1).sum() >= 8  # both cases exercised
    torch.testing.assert_close(norms, reference_norms, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got, (factors[:, None] * reference).sum(0), rtol=1e-4, atol=1e-5)


def test_one_record_moves_the_clipped_sum_by_at_most_the_bound():
    model, rows = bank_rows()
    bound = 0.5
    for outlier in (0, 5, 7):  # records with huge and with ordinary gradients
        everyone, _, _ = clipped_sum(model, rows, torch.arange(len(rows)), bound)
        without = torch.tensor([i for i in range(len(rows)) if i != outlier])
        others, _, _ = clipped_sum(model, rows, without, bound)
        assert (everyone - others).norm() <= bound * (1 + 1e-4)
    assert (everyone - others).norm() > 0


def test_an_empty_poisson_batch_has_gradient_zero():
    model, rows = bank_rows()
    got, norms, _ = clipped_sum(model, rows, torch.tensor([], dtype=torch.long), 1.0)
    assert len(norms) == 0 and torch.count_nonzero(got) == 0


def test_a_layer_the_loss_does_not_use_gets_gradient_zero():
    model, rows = bank_rows()
    rows.with_grade = False  # the grade head runs no forward pass
    got, _, parameters = clipped_sum(model, rows, torch.arange(len(rows)), 1.0)
    start = sum(p.numel() for p in parameters[:-2])
    assert torch.count_nonzero(got[start:]) == 0 and torch.count_nonzero(got[:start]) > 0


def test_networks_outside_the_formula_are_refused():
    with pytest.raises(UnsupportedNetwork, match="outside one"):
        LinearRecordGradients(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    with LinearRecordGradients(model), pytest.raises(UnsupportedNetwork, match="twice"):
        model(torch.ones(2, 3))
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    with pytest.raises(UnsupportedNetwork, match="share a parameter"):
        LinearRecordGradients(tied)


def test_poisson_batches_include_each_record_independently_at_rate_q():
    rng, n, rate, draws = np.random.default_rng(1), 60, 0.1, 4000
    masks = np.zeros((draws, n), dtype=bool)
    for draw in range(draws):
        masks[draw, poisson_batch(n, rate, rng).numpy()] = True
    sizes = masks.sum(1)
    mean, var = n * rate, n * rate * (1 - rate)
    assert abs(sizes.mean() - mean) <= Z * math.sqrt(var / draws)
    ratio = sizes.var(ddof=1) / var
    assert chi2.ppf(1e-4, draws - 1) / (draws - 1) <= ratio <= chi2.isf(1e-4, draws - 1) / (
        draws - 1)
    # every record at rate q (the first and the last are where gap sampling could slip)
    per_record = masks.sum(0)
    band = Z * math.sqrt(draws * rate * (1 - rate))
    assert np.all(np.abs(per_record - draws * rate) <= band)
    # neighbours are independent: both in a batch at rate q², not more, not less
    pairs = (masks[:, :-1] & masks[:, 1:]).sum()
    trials, both = draws * (n - 1), rate * rate
    assert abs(pairs - trials * both) <= Z * math.sqrt(trials * both * (1 - both) * 3)


def test_gap_sampling_covers_every_record_whatever_the_chunk():
    rng = np.random.default_rng(2)
    hits = np.zeros(30)
    for _ in range(3000):
        positions = bernoulli_positions(30, 0.5, rng, chunk=2)  # many chunks per batch
        assert np.all(np.diff(positions) > 0) and positions.max(initial=0) < 30
        hits[positions] += 1
    assert np.all(np.abs(hits - 1500) <= Z * math.sqrt(3000 * 0.25))
    assert len(poisson_batch(7, 1.0, rng)) == 7  # q = 1: the full batch


def test_noise_is_sigma_c_over_the_expected_batch_size():
    flat = torch.zeros(200_000)
    add_noise(flat, std=3.0, expected_batch_size=4.0, rng=np.random.default_rng(3))
    assert abs(flat.std().item() - 0.75) < 0.75 * 5 * math.sqrt(1 / 400_000) * 2
    assert abs(flat.mean().item()) < 5 * 0.75 / math.sqrt(200_000)


def dp_run(seed: int, schedule: DPSchedule | None) -> tuple[torch.Tensor, object]:
    model, rows = bank_rows(n=300)
    result = train_locally(model, rows.features.numpy(), rows.targets[:, 0].numpy(),
                           TrainingSettings(2, 64, 0.1, 0.9, 1.0), schedule, seed,
                           grades=np.random.default_rng(0).integers(0, 4, 300))
    return torch.cat([p.detach().flatten() for p in model.parameters()]), result, model


def test_dp_training_records_exactly_the_steps_it_ran_and_cleans_up():
    per_epoch = steps_per_epoch(300, 64)
    schedule = DPSchedule(1 / per_epoch, 2 * per_epoch, 1.3)
    _, result, model = dp_run(0, schedule)
    assert result.steps == 2 * per_epoch
    assert result.history == [(1.3, 1 / per_epoch, 2 * per_epoch)]
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="sample rate"):
        dp_run(0, DPSchedule(0.5, per_epoch, 1.3))


def test_a_large_bank_takes_at_most_the_capped_steps_on_larger_poisson_batches():
    model, rows = bank_rows(n=3000)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
    capped = TrainingSettings(2, 64, 0.1, 0.9, 1.0, max_steps_per_epoch=4)
    result = train_locally(model, rows.features.numpy(), rows.targets[:, 0].numpy(), capped,
                           DPSchedule(1 / 4, 8, 1.3), 0)
    assert result.steps == 8 and result.history == [(1.3, 0.25, 8)]
    # Binomial(3000, 1/4) batches (mean 750, sd 24), not batches of 64
    assert len(sizes) == 8 and all(750 - Z * 24 < s < 750 + Z * 24 for s in sizes)
    # a schedule planned without the cap (q = 1/47) does not match the capped settings
    with pytest.raises(ValueError, match="sample rate"):
        train_locally(model, rows.features.numpy(), rows.targets[:, 0].numpy(), capped,
                      DPSchedule(1 / steps_per_epoch(3000, 64), 47, 1.3), 0)


def test_dp_randomness_is_secret_and_plain_training_reproducible():
    schedule = DPSchedule(1 / steps_per_epoch(300, 64), 10, 1.3)
    first, _, _ = dp_run(0, schedule)
    second, _, _ = dp_run(0, schedule)
    assert not torch.equal(first, second)  # same public seed, different noise and batches
    first, plain, _ = dp_run(0, None)
    second, _, _ = dp_run(0, None)
    assert torch.equal(first, second) and plain.history == []


def test_audit_canaries_are_clipped_with_the_records_and_change_nothing_else():
    """The audit-only extra records: clipped to C by the same call, on their own layer only."""
    model, rows = bank_rows()
    canary_layer = nn.Linear(3, 3, bias=False)
    model.add_module("audit_canaries", canary_layer)
    batch, bound = torch.arange(len(rows)), 0.5
    plain, norms, parameters = clipped_sum(model, rows, batch, bound)
    inputs = torch.tensor([[1e3, 0, 0], [0, 0.1, 0]])  # one canary far above C, one below
    backprops = torch.tensor([[0, 1.0, 0], [0, 0, 1.0]])
    with LinearRecordGradients(model) as per_record:
        with_canaries = per_record.clipped_sum(rows.record_losses(batch), bound,
                                               {canary_layer: (inputs, backprops)})
        got = per_record.flat_grad.clone()
    offset = sum(p.numel() for p in parameters[:-1])  # the canary layer's weight comes last
    torch.testing.assert_close(with_canaries, norms)
    torch.testing.assert_close(got[:offset], plain[:offset])
    expected = torch.zeros(3, 3)
    expected[1, 0], expected[2, 1] = bound, 0.1  # clipped to C; small enough to pass as is
    torch.testing.assert_close(got[offset:].view(3, 3), expected, rtol=1e-5, atol=1e-6)
