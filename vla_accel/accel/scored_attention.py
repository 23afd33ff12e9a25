"""A layer's own attention, its weights kept: an attention probe without recomputing the queries.

VLA-Pruner's semantic score averages the head-averaged attention of ALL prefill queries at layer K-1,
and its action score reads each decoded action query at the action layer. Recomputing those rows on
the side (``query_attention``) repeats the layer's RMSNorm, q projection and RoPE (at hidden 1024 the q
projection of ~280 rows is the largest part). Instead, that layer's attention runs through
``scored_attention_forward`` (an entry of transformers' AttentionInterface, chosen for that module and
that call only): from the layer's own post-RoPE queries and keys it computes the head-averaged
probabilities with the side probe's own function (``query_attention.head_mean_attention``: float32
q k^T * scaling, the same boolean causal + padding mask, softmax, 0 for a query with no key) and hands
the call to the module's own attention function for the output. The weights are therefore bit for bit the side probe's
wherever the query rows are the same matrix (all rows of a prefill, the one row of a decode step;
tests/accel/test_scored_attention.py), the layer's output is exactly what it is without the request, and
with pruning off nothing here runs.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from vla_accel.accel.query_attention import head_mean_attention
from vla_accel.measure.timing import stage

ATTENTION_NAME = "vla_accel_scored"


@dataclass
class ScoreRequest:
    """What the scored call needs and what it leaves: ``allowed`` (B, S, S) bool, which keys each query
    row may attend to; ``head_mean`` (B, S, S) float32, set by the call."""

    allowed: Tensor
    head_mean: Tensor | None = None
    implementation: str | None = None  # the module's own attention implementation (set by scored_call)


def scored_attention_forward(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling: float,
    dropout: float = 0.0, **kwargs,
):
    """(B, H, S, hd) query / (B, H_kv, S, hd) key, value -> what the module's own attention function
    returns; the probabilities' head mean goes to ``kwargs["score_request"]``, computed with the request's
    boolean mask (the probe's), not the model's ``attention_mask`` (whose form depends on the backend)."""
    request: ScoreRequest = kwargs.pop("score_request")
    with stage("select"):  # the pruning method's work, timed as its own stage inside prefill / decode
        request.head_mean = head_mean_attention(query, key, request.allowed, scaling, module.num_key_value_groups)
    # the output from the module's own attention function (SDPA, eager, ...) on the same arguments: the
    # layer computes exactly what it computes without the request
    own = ALL_ATTENTION_FUNCTIONS.get_interface(request.implementation, eager_attention_forward)
    return own(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, scored_attention_forward)


_SCORED_CONFIGS: dict[int, tuple] = {}  # id(config) -> (config, its implementation, the scored copy)


def _scored_config(original):
    """A shallow copy of ``original`` naming ``ATTENTION_NAME``, made once per config and implementation
    (a copy costs ~20 us, and a step routes up to 7 calls; the original is kept so its id stays its own)."""
    entry = _SCORED_CONFIGS.get(id(original))
    if entry is None or entry[0] is not original or entry[1] != original._attn_implementation:
        scored = copy.copy(original)
        scored._attn_implementation = ATTENTION_NAME  # a Llama config has no sub-configs the setter would touch
        entry = _SCORED_CONFIGS[id(original)] = (original, original._attn_implementation, scored)
    return entry[2]


@contextmanager
def scored_call(attn_module: nn.Module, request: ScoreRequest | None = None):
    """Route ``attn_module``'s next calls through ``scored_attention_forward``: a shallow copy of its
    config names it (the model's shared config, and so every other layer, is untouched); restored after."""
    original = attn_module.config
    if request is not None:
        request.implementation = original._attn_implementation
    attn_module.config = _scored_config(original)
    try:
        yield
    finally:
        attn_module.config = original
