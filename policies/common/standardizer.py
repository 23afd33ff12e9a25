"""Per-feature standardisation with batch statistics (a BatchNorm without affine terms).

Why: a VLM trained from scratch on our demos turns its inputs into a large constant plus a small
input-dependent part (measured: projected visual tokens with a shared offset ~10x what varies between
images; a cognition feature ~99% constant). Behind the LLM's RMSNorms that part never got used: the
loss did not depend on the image at all. Standardising over the batch gives the varying part unit
scale from the first step. Pretrained VLMs (real OpenVLA / CogACT) do not need it: off by default.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureStandardizer(nn.Module):
    """(x - mean) / std over every leading dimension of (..., dim): batch statistics in training,
    running ones at inference (rows are then independent, so batch = single holds).

    The statistics stay float32 whatever dtype the model is cast to: the input-dependent part can be
    ~1% of a feature, below bfloat16's resolution of a stored mean. `set_statistics` replaces the
    running ones by the exact statistics of given features (the trainer does so before every
    checkpoint, as the moving averages lag a model that is still learning)."""

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def _apply(self, fn, recurse=True):
        keep = {k: getattr(self, k) for k in ("running_mean", "running_var")}
        super()._apply(fn, recurse)
        for k, v in keep.items():  # follow the device, never the dtype
            setattr(self, k, v.to(getattr(self, k).device, torch.float32))
        return self

    @torch.no_grad()
    def set_statistics(self, features: torch.Tensor) -> None:
        """The running statistics := those of `features` (..., dim), exactly."""
        f = features.float().reshape(-1, features.shape[-1])
        self.running_mean.copy_(f.mean(0))
        self.running_var.copy_(f.var(0, unbiased=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if self.training:
            flat = xf.reshape(-1, x.shape[-1])
            if flat.shape[0] < 2:
                raise ValueError("standardising features in training needs a batch of at least 2")
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return ((xf - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)
