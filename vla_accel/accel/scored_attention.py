"""The score layer's own attention, its weights kept: an all-query probe at the cost of a head mean.

VLA-Pruner's semantic score averages the head-averaged attention of ALL prefill queries at layer K-1.
Recomputing those rows on the side (``query_attention``) repeats that layer's q projection, its S x S
scores and their softmax -- about two thirds of a layer at hidden 1024 on a CPU. Instead, that one layer's
attention runs through ``scored_attention_forward`` (an entry of transformers' AttentionInterface, chosen
for that module and that call only) which computes the probabilities with ``query_attention``'s very
operations -- float32 q k^T * scaling, the same boolean causal + padding mask, softmax, 0 for a query
with no key -- keeps their mean over the heads, and multiplies them with the values for the layer's
output. The scores are therefore bit for bit the side probe's (tests/accel/test_scored_attention.py),
the layer's output differs from SDPA's only by rounding (the weights are applied in the model's dtype,
as transformers' eager attention does), and with pruning off nothing here runs.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import repeat_kv

ATTENTION_NAME = "vla_accel_scored"


@dataclass
class ScoreRequest:
    """What the scored call needs and what it leaves: ``allowed`` (B, S, S) bool, which keys each query
    row may attend to; ``head_mean`` (B, S, S) float32, set by the call."""

    allowed: Tensor
    head_mean: Tensor | None = None


def scored_attention_forward(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling: float,
    dropout: float = 0.0, **kwargs,
) -> tuple[Tensor, None]:
    """(B, H, S, hd) query / (B, H_kv, S, hd) key, value -> the attention output (B, S, H, hd), as the
    interface's other entries return it; the probabilities' head mean goes to ``kwargs["score_request"]``.
    ``attention_mask`` (the model's own, whatever its form) is ignored: the request's mask is the
    probe's, so both computations see exactly the same keys."""
    request: ScoreRequest = kwargs["score_request"]
    k = repeat_kv(key, module.num_key_value_groups)
    v = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query.float(), k.float().transpose(-1, -2)) * scaling  # (B, H, S, S)
    scores = scores.masked_fill(~request.allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a padding query with no key -> zeros
    request.head_mean = probs.mean(dim=1)
    out = torch.matmul(probs.to(value.dtype), v)  # (B, H, S, hd)
    return out.transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, scored_attention_forward)


@contextmanager
def scored_call(attn_module: nn.Module):
    """Route ``attn_module``'s next calls through ``scored_attention_forward``: a shallow copy of its
    config names it (the model's shared config, and so every other layer, is untouched); restored after."""
    original = attn_module.config
    scored = copy.copy(original)
    scored._attn_implementation = ATTENTION_NAME
    attn_module.config = scored
    try:
        yield
    finally:
        attn_module.config = original
