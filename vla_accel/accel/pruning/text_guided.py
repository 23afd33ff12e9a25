"""SparseVLM-style text-guided pruning: keep the visual tokens the instruction's text tokens attend to most.

The score is the mean over the instruction tokens of their head-averaged attention to each visual token
at layer K-1. (Full SparseVLM also recycles pruned tokens into merged ones; not done here.)
"""

from __future__ import annotations

from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext, topk_indices


class TextGuided(PruningMethod):
    name = "text_guided"
    default_layer = 3
    _score_queries = "text"

    def select(self, ctx: SelectionContext) -> Tensor:
        return topk_indices(ctx.visual_attention, ctx.budget)
