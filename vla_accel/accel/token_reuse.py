"""VLA-Cache (arXiv 2502.02175): reuse the K/V of static, task-irrelevant visual tokens across steps.

At control step t a visual patch is *static* if the cosine similarity of its pixel patch with the
previous frame's is >= ``static_threshold`` (0.996); the ``max_static`` (150 of 256) most similar static
patches are the candidates. The ``num_relevant`` (100 of 256) visual tokens that the instruction's text
tokens attended to most at ``relevance_layer`` (head-averaged; VLA-Cache reads layer 15 of 32) in the
previous step are task-relevant and always recomputed. The rest of the candidates are *reused*: in
every layer their keys and values are copied from the previous step's KV cache and their hidden states
are not computed at all (the prefill runs only the other tokens as queries).

Counts are given for M = 256 visual tokens and scaled by M / 256 for other token counts. Because the
batch must stay rectangular, every row reuses the same number of tokens: the smallest reusable count
over the rows (each row keeps its own most static ones); with one row per policy this is exact.
The paper's per-layer reuse ratio (1 - normalised attention entropy of the layer) is not implemented:
every layer reuses the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

REFERENCE_TOKENS = 256


@dataclass(frozen=True)
class TokenReuseConfig:
    static_threshold: float = 0.996
    max_static: int = 150
    num_relevant: int = 100
    relevance_layer: int | None = None  # None -> num_layers // 2 - 1 (15 of 32)

    def __post_init__(self) -> None:
        if not -1.0 <= self.static_threshold <= 1.0:
            raise ValueError(f"vla_cache: static_threshold must be a cosine in [-1, 1], got {self.static_threshold}")
        if self.max_static < 0 or self.num_relevant < 0:
            raise ValueError("vla_cache: max_static and num_relevant must be >= 0")
        if self.relevance_layer is not None and self.relevance_layer < 0:
            raise ValueError(f"vla_cache: relevance_layer must be >= 0, got {self.relevance_layer}")

    def scaled(self, count: int, num_visual: int) -> int:
        return min(num_visual, round(count * num_visual / REFERENCE_TOKENS))


def pixel_patches(pixel_values: Tensor, num_visual: int) -> Tensor:
    """(B, n_cam, C, S, S) images -> (B, M, C * p * p) flattened patches in the visual tokens' order
    (camera-major, then raster), for a square grid of M / n_cam patches per camera."""
    B, n_cam, C, S, _ = pixel_values.shape
    per_cam = num_visual // n_cam
    grid = int(round(per_cam**0.5))
    if grid * grid * n_cam != num_visual or S % grid:
        raise ValueError(f"cannot map {num_visual} visual tokens onto {n_cam} camera(s) of {S}x{S} pixels")
    p = S // grid
    patches = F.unfold(pixel_values.flatten(0, 1).float(), kernel_size=p, stride=p)  # (B*n_cam, C*p*p, grid^2)
    return patches.transpose(1, 2).reshape(B, num_visual, C * p * p)


def reusable_tokens(
    config: TokenReuseConfig, patches: Tensor, prev_patches: Tensor, prev_relevance: Tensor
) -> Tensor:
    """(B, M) bool: the visual tokens whose K/V may be copied from the previous step.

    patches, prev_patches: (B, M, P) pixel patches of this and the previous frame
    prev_relevance:        (B, M) text -> vision attention of the previous step
    """
    M = patches.shape[1]
    sim = F.cosine_similarity(patches.float(), prev_patches.float(), dim=-1)  # (B, M)
    n_static, n_rel = config.scaled(config.max_static, M), config.scaled(config.num_relevant, M)
    static = torch.zeros_like(sim, dtype=torch.bool)
    if n_static:
        top = sim.topk(n_static, dim=-1)
        static.scatter_(1, top.indices, top.values >= config.static_threshold)
    relevant = torch.zeros_like(static)
    if n_rel:
        relevant.scatter_(1, prev_relevance.topk(n_rel, dim=-1).indices, True)
    return static & ~relevant


def computed_token_index(reusable: Tensor, similarity: Tensor, visual_start: Tensor, seq_len: int) -> Tensor:
    """(B, T - r) long ascending: the prompt positions to compute when every row reuses r = min_b |reusable_b|
    tokens (each row its r most similar reusable ones)."""
    B, M = reusable.shape
    r = int(reusable.sum(-1).min())
    keep = torch.ones(B, seq_len, dtype=torch.bool, device=reusable.device)
    if r:
        score = torch.where(reusable, similarity, torch.full_like(similarity, float("-inf")))
        reused = visual_start[:, None] + score.topk(r, dim=-1).indices  # (B, r) prompt positions
        keep.scatter_(1, reused, False)
    return keep.nonzero()[:, 1].view(B, seq_len - r)


class ReuseCache(DynamicCache):
    """A DynamicCache whose first write to each layer merges the newly computed tokens' K/V into the
    previous step's K/V of the whole prompt (the reused tokens keep the old entries); later writes
    (decoded tokens) append as usual."""

    def __init__(self, config, base_keys: list[Tensor | None], base_values: list[Tensor | None], computed: Tensor):
        super().__init__(config=config)
        self._base = list(zip(base_keys, base_values))  # per layer (B, H_kv, T, hd) or None
        self._computed = computed  # (B, Q) prompt positions of the computed tokens

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        if not layer.is_initialized and self._base[layer_idx][0] is not None:
            base_k, base_v = self._base[layer_idx]
            idx = self._computed[:, None, :, None].expand(-1, key_states.shape[1], -1, key_states.shape[-1])
            key_states = base_k.scatter(2, idx, key_states)  # (B, H_kv, T, hd)
            value_states = base_v.scatter(2, idx, value_states)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)
