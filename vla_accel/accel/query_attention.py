"""Attention weights for a few chosen queries at one layer, computed on the side.

Every layer keeps running its normal (SDPA) attention; where a pruning method needs attention maps we
recompute only the rows it needs from that layer's own q projection and the post-RoPE keys already in
the KV cache, so there is no global switch to eager attention and no (B, H, T, T) map at other layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half


def query_attention(
    layer: nn.Module,
    rotary_emb: nn.Module,
    hidden_in: Tensor,  # (B, Q, D) the layer's INPUT hidden states at the query positions
    query_pos: Tensor,  # (B, Q) long, RoPE position ids of the queries
    keys: Tensor,  # (B, H_kv, S, hd) post-RoPE keys of this layer (from the KV cache)
    allowed: Tensor,  # (B, Q, S) bool, which keys each query may attend to (causal and padding)
    rope: bool = True,  # False: the query is not rotated (pass un-rotated keys: ``unrotated_keys``; FEATHER)
    cos_sin: tuple[Tensor, Tensor] | None = None,  # (B, Q, hd) each: the queries' rows of the layer's own
) -> Tensor:
    """Head-averaged softmax attention of the queries over the S keys: (B, Q, S) float32.

    Same maths as the layer's own attention: RMSNorm -> q_proj -> RoPE -> q k^T * scaling -> mask ->
    softmax (float32), then the mean over the H query heads (GQA key heads repeated).
    """
    attn = layer.self_attn
    B, Q, _ = hidden_in.shape
    h = layer.input_layernorm(hidden_in)
    q = attn.q_proj(h).view(B, Q, -1, attn.head_dim).transpose(1, 2)  # (B, H, Q, hd)
    if rope:
        # the layer's own (cos, sin) rows equal a recomputation bit for bit: each entry is one product
        # position * frequency (an outer product), then cos / sin, elementwise -- so they are reused
        cos, sin = cos_sin if cos_sin is not None else rotary_emb(h, query_pos)  # (B, Q, hd)
        q = q * cos[:, None] + rotate_half(q) * sin[:, None]
    return head_mean_attention(q, keys, allowed, attn.scaling, attn.num_key_value_groups)


def head_mean_attention(q: Tensor, keys: Tensor, allowed: Tensor, scaling: float, n_rep: int) -> Tensor:
    """(B, H, Q, hd) post-RoPE queries, (B, H_kv, S, hd) keys, (B, Q, S) bool mask -> (B, Q, S) float32:
    softmax(q k^T * scaling) over the allowed keys, averaged over the heads (a query with no allowed key
    gets zeros). The one computation of every probe, on the side or inside a layer (``scored_attention``),
    so both give the same bits for the same rows."""
    k = repeat_kv(keys, n_rep)  # (B, H, S, hd)
    # in place on the fresh product: the same elementwise ops as out-of-place, two (B, H, Q, S) buffers fewer
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(scaling)  # (B, H, Q, S)
    scores.masked_fill_(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)
    return probs.mean(dim=1)


def unrotated_keys(layer: nn.Module, hidden_in: Tensor) -> Tensor:
    """(B, H_kv, S, hd) the layer's keys of its input rows (B, S, D) WITHOUT RoPE (the cache holds rotated
    ones): one extra k projection, for a criterion that ignores positions (FEATHER)."""
    attn = layer.self_attn
    B, S, _ = hidden_in.shape
    return attn.k_proj(layer.input_layernorm(hidden_in)).view(B, S, -1, attn.head_dim).transpose(1, 2)
