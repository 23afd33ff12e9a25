"""DivPrune: before the LLM, keep the M~ visual tokens that greedily solve the max-min diversity problem
over cosine distance of the projected visual embeddings. Needs no attention."""

from __future__ import annotations

from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext
from vla_accel.accel.pruning.diversity import greedy_max_min


class DivPrune(PruningMethod):
    name = "divprune"
    default_layer = 0  # before layer 0: every LLM layer sees only the kept tokens

    def select(self, ctx: SelectionContext) -> Tensor:
        return greedy_max_min(ctx.visual_embeds, ctx.budget)
