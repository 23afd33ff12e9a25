"""ToDRE (token diversity + task relevance): two stages.

1. Before the LLM (K_1 = 0): greedy k-center over the projected visual tokens (the vision encoder's
   output after the projector), cosine distance -- farthest-point traversal: each next centre is the token
   farthest from the centres already chosen (the same greedy as DivPrune's max-min; first centre: the
   token whose nearest neighbour is farthest). Keeps M~_1 tokens.
2. Inside the LLM at K_2 ("information migration": by then the instruction tokens have absorbed what
   they need from the image), the tokens the instruction attends to least are dropped: keep the M~ of the
   M~_1 with the highest mean text -> vision attention (head-averaged) at layer K_2 - 1.

Budgets: the config's M~ is what layers >= K_2 see; stage 1 keeps M~_1 = M~ / relevance_keep (capped at
M). The paper removes 90% of the tokens after the encoder and then, at a later decoder layer, every
visual token; a runner stage keeps at least one token, so ``relevance_keep`` (ours: 0.5) stands in for
that second cut. ``relevance_layer`` (K_2): not in methods.md; ours: the middle of the LLM (16 of 32,
scaled to the model's depth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from vla_accel.accel.pruning.base import (
    PruningMethod, SelectionContext, increasing_layers, scaled_layer, topk_indices,
)  # fmt: skip
from vla_accel.accel.pruning.diversity import greedy_max_min


class ToDRE(PruningMethod):
    name = "todre"
    default_layer = 0

    @dataclass(frozen=True)
    class Params:
        relevance_keep: float = 0.5  # stage 2 keeps this share of stage 1's tokens (ours; see above)
        relevance_layer: int | None = None  # K_2; None = 16 of 32 layers, scaled to the model's depth

        def __post_init__(self) -> None:
            if not 0.0 < self.relevance_keep <= 1.0:
                raise ValueError(f"todre: relevance_keep must be in (0, 1], got {self.relevance_keep}")
            if self.relevance_layer is not None and self.relevance_layer < 1:
                raise ValueError(f"todre: relevance_layer must be >= 1, got {self.relevance_layer}")

    def stage_layers(self, first_layer: int | None, num_layers: int) -> tuple[int, ...]:
        k1 = 0 if first_layer is None else first_layer
        if self.params.relevance_layer is not None:  # explicit layers are taken as given (resolve_plan checks)
            return (k1, self.params.relevance_layer)
        return increasing_layers([k1, scaled_layer(16, num_layers)], num_layers)

    def stage_budgets(self, num_visual: int, budget: int) -> tuple[int, ...]:
        return (min(num_visual, math.ceil(budget / self.params.relevance_keep)), budget)

    def stage_queries(self, stage: int) -> str | None:
        return None if stage == 0 else "text"

    def select(self, ctx: SelectionContext) -> Tensor:
        if ctx.stage == 0:
            return greedy_max_min(ctx.visual_embeds, ctx.budget)
        cand = ctx.candidate_index()
        return cand.gather(1, topk_indices(ctx.visual_attention, ctx.budget))  # candidates ascending -> sorted
