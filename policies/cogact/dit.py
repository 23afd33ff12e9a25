"""A DiT action head with in-context conditioning (no adaLN), in two token layouts.

Sequence (`condition_tokens=2`, our default): [timestep token, condition token, x_1 .. x_H]
(B, 2 + H, W). `condition_tokens=1` is the released CogACT's: one condition token, the sum of the
timestep and condition embeddings, [t + z, x_1 .. x_H] (B, 1 + H, W), with LayerNorms that carry no
affine parameters (`norm_affine=False`), so that its weights load unchanged. Then a learned position embedding,
`depth` blocks of pre-norm self-attention (`attn`) and MLP (`mlp`) as separate sub-modules so that a
feature cache can reuse their outputs between denoising steps (EfficientVLA), then a final norm and a
linear layer on the H action tokens -> predicted noise (B, H, A).

Classifier-free guidance: `null_condition` is a learned vector in the condition space that replaces
the condition with probability `cond_drop_prob` in training.

Feature-cache seam: `DiT.feature_cache` (None by default) is the hook the accelerator sets for
EfficientVLA's head cache. With one set, every block asks it for its `attn` / `mlp` output instead of
calling them (it recomputes or serves a stored output), the DiT reports the end of each call, and the
sampler announces each new denoising loop; the weights and classes stay as they are.

`standardize` maps the cognition feature to that condition space: the identity, or with
`standardize_condition` a batch-statistics standardiser for VLMs trained from scratch, whose cognition
feature is ~99% constant (policies/common/standardizer.py says why).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vla_accel.policies.common.standardizer import FeatureStandardizer


class FeatureCache(Protocol):
    """What the DiT asks of a feature cache set on `DiT.feature_cache`."""

    def start_loop(self) -> None:
        """A new denoising loop (one control step's DDIM steps) begins: forget every stored output."""

    def output(self, key: tuple[int, str], module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`module(x)`, or the output stored under `key` at the last refresh."""

    def end_call(self) -> None:
        """One DiT call (one denoising step) is done."""


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, W)
        emb = timestep_embedding(t, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention over the DiT sequence."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, norm_affine: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6, elementwise_affine=norm_affine)
        self.attn = SelfAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6, elementwise_affine=norm_affine)
        self.mlp = FeedForward(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None, index: int = 0) -> torch.Tensor:
        if cache is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + cache.output((index, "attn"), self.attn, self.norm1(x))
        return x + cache.output((index, "mlp"), self.mlp, self.norm2(x))


class DiT(nn.Module):
    def __init__(self, action_dim: int, horizon: int, cond_dim: int, width: int = 256, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 4.0, standardize_condition: bool = False,
                 condition_tokens: int = 2, norm_affine: bool = True) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"DiT width {width} must be divisible by num_heads {num_heads}")
        if condition_tokens not in (1, 2):
            raise ValueError(f"DiT condition_tokens must be 1 (CogACT's t + z) or 2 ([t][z]), got {condition_tokens}")
        self.horizon = horizon
        self.condition_tokens = condition_tokens
        self.x_embedder = nn.Linear(action_dim, width)
        self.t_embedder = TimestepEmbedder(width)
        self.z_embedder = nn.Linear(cond_dim, width)
        self.cond_norm = FeatureStandardizer(cond_dim) if standardize_condition else nn.Identity()
        self.null_condition = nn.Parameter(torch.randn(1, cond_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, horizon + condition_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(DiTBlock(width, num_heads, mlp_ratio, norm_affine) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=norm_affine)
        self.final_proj = nn.Linear(width, action_dim)
        nn.init.zeros_(self.final_proj.weight)  # start by predicting zero noise (DiT's init)
        nn.init.zeros_(self.final_proj.bias)
        self.feature_cache: FeatureCache | None = None  # the accelerator's head-cache hook (module docstring)

    def standardize(self, cognition: torch.Tensor) -> torch.Tensor:
        """(B, C) cognition features -> conditions (identity unless `standardize_condition`)."""
        return self.cond_norm(cognition)

    def embed(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, H, A) noisy actions, t (B,) timesteps, cond (B, C) standardised -> tokens
        (B, condition_tokens + H, W)."""
        if self.condition_tokens == 1:  # CogACT: the condition token is the sum t_emb + z_emb
            head = (self.t_embedder(t) + self.z_embedder(cond))[:, None]
        else:
            head = torch.cat([self.t_embedder(t)[:, None], self.z_embedder(cond)[:, None]], dim=1)
        return torch.cat([head, self.x_embedder(x)], dim=1) + self.pos_embed

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, condition_tokens + H, W) -> predicted noise (B, H, A)."""
        return self.final_proj(self.final_norm(tokens[:, -self.horizon :]))

    def start_loop(self) -> None:
        """The sampler calls this before each denoising loop (it restarts the feature cache, if any)."""
        if self.feature_cache is not None:
            self.feature_cache.start_loop()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cache = self.feature_cache
        tokens = self.embed(x, t, cond)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, cache, i)
        if cache is not None:
            cache.end_call()
        return self.head(tokens)
