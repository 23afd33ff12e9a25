"""The weight average (train.ema_decay): its update rule, the swap in and out of the model, and what a
checkpoint and its trainer state hold."""

import pytest
import torch
from torch import nn

from vla_accel.policies.weight_average import RAW_PREFIX, WeightAverage


def test_the_average_follows_its_warmed_up_decay():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    avg = WeightAverage(model, decay=0.9)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n_update in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        avg.update()
        d = min(0.9, (1 + n_update) / (10 + n_update))
        for n, p in model.named_parameters():
            expected[n] = d * expected[n] + (1 - d) * p.detach()
    assert avg.updates == 30
    for n in expected:
        torch.testing.assert_close(avg.shadow[n], expected[n])


def test_applied_swaps_the_average_in_and_the_raw_weights_back():
    model = nn.Linear(3, 2)
    avg = WeightAverage(model, decay=0.5)
    raw_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for s in avg.shadow.values():
            s.fill_(7.0)
    with avg.applied() as raw:
        assert all(torch.all(p == 7.0) for p in model.parameters())
        assert raw.keys() == {RAW_PREFIX + n for n in raw_before}
        assert all(torch.equal(raw[RAW_PREFIX + n], v) for n, v in raw_before.items())
    assert all(torch.equal(p, raw_before[n]) for n, p in model.named_parameters())


def test_only_trainable_parameters_are_averaged_and_a_bad_decay_is_refused():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    assert set(WeightAverage(model, 0.99).shadow) == {"1.weight", "1.bias"}
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="ema_decay"):
            WeightAverage(model, bad)


def test_restore_raw_puts_the_trainer_states_weights_back():
    model = nn.Linear(2, 2)
    avg = WeightAverage(model, 0.9)
    assert avg.restore_raw({"opt.0.exp_avg": torch.zeros(1)}) is False  # a state without an average
    raw = {RAW_PREFIX + n: torch.full_like(p, 3.0) for n, p in model.named_parameters()}
    assert avg.restore_raw(raw) is True
    assert all(torch.all(p == 3.0) for p in model.parameters())
    with pytest.raises(ValueError, match="freeze_vlm"):
        avg.restore_raw({RAW_PREFIX + "weight": torch.zeros(2, 2)})
