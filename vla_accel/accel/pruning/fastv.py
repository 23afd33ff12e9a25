"""FastV: keep the visual tokens the last prefill token attends to most (head-averaged, layer K-1)."""

from __future__ import annotations

from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext, topk_indices


class FastV(PruningMethod):
    name = "fastv"
    default_layer = 2  # FastV prunes "after layer 2" (1-indexed, layers 1..2 full): TokenPruningConfig
    _score_queries = "last"

    def select(self, ctx: SelectionContext) -> Tensor:
        return topk_indices(ctx.visual_attention, ctx.budget)
