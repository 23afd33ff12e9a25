"""SparseVLM-style text-guided pruning: keep the visual tokens the instruction's text tokens attend to most.

The score is the mean over the instruction tokens of their head-averaged attention to each visual token
at layer K-1.

Recycling (SparseVLM, arXiv 2410.04417; ``recycle_tokens`` r > 0, off by default): the pruned tokens are
not all dropped. The pruned tokens with the highest scores (a share ``recycle_ratio`` of them, at least r)
are recycled: grouped into r clusters and each cluster averaged into one token. Ours, where SparseVLM
differs or methods.md is silent:
* the budget M~ counts the recycled tokens: M~ - r tokens kept by score + r merged ones, so the layers
  after K see M~ visual tokens at every setting (fair against the other methods at the same keep ratio);
* grouping: r centres by greedy max-min diversity (k-center over cosine distance) among the recycled
  tokens' hidden states entering layer K, each recycled token joining its most similar centre (SparseVLM
  clusters with DPC-KNN);
* a merged token takes its centre's place: the centre's row, KV slot and ORIGINAL position id, with the
  mean of its cluster's hidden states (the centre included) as its value from layer K on;
* ``recycle_ratio`` 0.3 (SparseVLM's share is not recorded in ../shared/methods.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext, topk_indices
from vla_accel.accel.pruning.diversity import greedy_max_min


class TextGuided(PruningMethod):
    name = "text_guided"
    default_layer = 3
    _score_queries = "text"

    @dataclass(frozen=True)
    class Params:
        recycle_tokens: int = 0  # r merged tokens made of pruned ones (0: plain pruning)
        recycle_ratio: float = 0.3  # share of the pruned tokens (best-scored first) that are recycled

        def __post_init__(self) -> None:
            if int(self.recycle_tokens) != self.recycle_tokens or self.recycle_tokens < 0:
                raise ValueError(f"text_guided: recycle_tokens must be an integer >= 0, got {self.recycle_tokens}")
            if not 0.0 < self.recycle_ratio <= 1.0:
                raise ValueError(f"text_guided: recycle_ratio must be in (0, 1], got {self.recycle_ratio}")

    @property
    def needs_visual_hidden(self) -> bool:
        return self.params.recycle_tokens > 0

    def select(self, ctx: SelectionContext) -> Tensor:
        if self.params.recycle_tokens:
            return self.select_and_merge(ctx)[0]
        return topk_indices(ctx.visual_attention, ctx.budget)

    def select_and_merge(self, ctx: SelectionContext) -> tuple[Tensor, Tensor | None]:
        r = self.params.recycle_tokens
        if r == 0:
            return self.select(ctx), None
        n_keep = ctx.budget - r
        if n_keep < 1:
            raise ValueError(f"text_guided: recycle_tokens={r} leaves no token kept by score of the "
                             f"budget {ctx.budget}")  # fmt: skip
        cand = ctx.candidate_index()  # (B, C)
        order = ctx.visual_attention.argsort(dim=-1, descending=True, stable=True)  # (B, C) candidate positions
        pruned = cand.shape[1] - n_keep
        n_pool = min(pruned, max(r, math.ceil(self.params.recycle_ratio * pruned)))
        pool = order[:, n_keep : n_keep + n_pool]  # (B, P) the recycled tokens, best first
        hidden = ctx.visual_hidden  # (B, C, D) entering layer K
        centres, assign = cluster(hidden.gather(1, pool[..., None].expand(-1, -1, hidden.shape[-1])), r)
        centre_pos = pool.gather(1, centres)  # (B, r) candidate positions of the centres
        kept = cand.gather(1, torch.cat([order[:, :n_keep], centre_pos], 1).sort(dim=-1).values)
        merge_into = torch.full_like(cand, -1).scatter_(1, pool, cand.gather(1, centre_pos).gather(1, assign))
        return kept, merge_into


def cluster(h: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """k centres of the P tokens h (B, P, D) by greedy max-min cosine diversity, and each token's centre:
    (centres (B, k) positions in [0, P), assign (B, P) in [0, k), every centre assigned to itself)."""
    centres = greedy_max_min(h, k)  # (B, k)
    hn = F.normalize(h.float(), dim=-1)
    sim = hn @ hn.gather(1, centres[..., None].expand(-1, -1, hn.shape[-1])).transpose(1, 2)  # (B, P, k)
    assign = sim.argmax(-1)
    return centres, assign.scatter_(1, centres, torch.arange(k, device=h.device).expand_as(centres))
