"""Batch-statistics standardisers of the visual tokens and of the CogACT condition."""

import pytest
import torch

from vla_accel.policies.common.projector import Projector
from vla_accel.policies.common.standardizer import FeatureStandardizer


def test_condition_standardizer_uses_batch_statistics_in_training_and_running_ones_after():
    torch.manual_seed(0)
    norm = FeatureStandardizer(4, momentum=0.5)
    x = 16.0 + 0.1 * torch.randn(64, 4)  # a large constant and a small varying part, as from a fresh VLM
    y = norm.train()(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.running_mean, 0.5 * x.mean(0))  # moving average from zero
    norm.set_statistics(x)
    torch.testing.assert_close(norm.running_mean, x.mean(0))
    norm.eval()
    torch.testing.assert_close(norm(x[:1]), y[:1], atol=1e-3, rtol=0)  # rows alone, as in the batch
    half = norm.to(torch.bfloat16)
    assert half.running_mean.dtype == torch.float32  # a bf16 mean would swamp the ~1% that varies
    assert half(x[:2].bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="at least 2"):
        norm.train()(x[:1])


def test_standardized_visual_tokens_are_centred_in_training():
    torch.manual_seed(0)
    proj = Projector(8, 16, 3, standardize=True).train()
    tokens = proj(3.0 + torch.randn(4, 10, 8))
    flat = tokens.reshape(-1, 16)
    torch.testing.assert_close(flat.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    assert set(Projector(8, 16, 3).state_dict()) == {f"fc{i}.{w}" for i in (1, 2, 3) for w in ("weight", "bias")}
