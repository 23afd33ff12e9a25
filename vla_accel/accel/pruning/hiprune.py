"""HiPrune: three kinds of tokens from the vision encoder's hierarchical attention, before the LLM.

* anchors: the tokens with the highest attention in a middle, object-centric encoder layer
  (``object_layer``: layer 9 of CLIP-L's 24 in the released code, i.e. relative depth 9/24, scaled to the
  encoder's depth);
* buffers: the spatial neighbours of each anchor (up, down, left, right in its camera's patch grid),
  which keep the objects' surroundings and soften attention noise;
* registers: the tokens with the highest attention in the deep (output) layer -- the last block that
  runs -- which spreads over the whole image and carries global information.
Anchors are taken in descending object-layer attention, each followed by its not-yet-kept neighbours,
until anchors + buffers fill alpha * M~ (released default alpha = 0.1); registers fill the rest.
Attention score per patch (``score``): "received" (the mean attention a patch receives over all queries,
head-averaged: needs no class token, HiPrune's model-agnostic choice) or "cls" (the [CLS] row).
The greedy walk runs per batch row on the host (M <= a few hundred tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext
from vla_accel.policies.common.vision import AttentionProbe

DEEP = -1  # the probe entry of the output layer: the last block that runs


class HiPrune(PruningMethod):
    name = "hiprune"
    default_layer = 0

    @dataclass(frozen=True)
    class Params:
        alpha: float = 0.1  # share of the budget for anchors + buffers
        object_layer: float = 9 / 24  # relative depth of the object-centric layer (9 of 24)
        score: str = "received"
        encoder: int = 0

        def __post_init__(self) -> None:
            if not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"hiprune: alpha must be in [0, 1], got {self.alpha}")
            if not 0.0 < self.object_layer <= 1.0:
                raise ValueError(f"hiprune: object_layer is a relative depth in (0, 1], got {self.object_layer}")
            if self.score not in ("received", "cls"):
                raise ValueError(f"hiprune: score must be 'received' or 'cls', got {self.score!r}")

    def encoder_attention_probe(self) -> AttentionProbe:
        p = self.params
        return AttentionProbe(layers=(DEEP,), relative=(p.object_layer,), kind=p.score, encoder=p.encoder)

    def select(self, ctx: SelectionContext) -> Tensor:
        cams, rows, cols = ctx.require_grid("hiprune")
        obj = ctx.encoder_attention[self.params.object_layer].cpu()
        deep = ctx.encoder_attention[DEEP].cpu()
        n_ab = round(self.params.alpha * ctx.budget)
        kept = [_select_row(obj[b], deep[b], n_ab, ctx.budget, rows, cols) for b in range(ctx.batch_size)]
        return torch.stack(kept).to(ctx.visual_embeds.device)


def neighbours(m: int, rows: int, cols: int) -> list[int]:
    """The up, down, left and right neighbours of token m within its camera's rows x cols grid."""
    cam, r, c = m // (rows * cols), (m % (rows * cols)) // cols, m % cols
    base = cam * rows * cols
    near = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
    return [base + rr * cols + cc for rr, cc in near if 0 <= rr < rows and 0 <= cc < cols]


def _select_row(obj: Tensor, deep: Tensor, n_ab: int, budget: int, rows: int, cols: int) -> Tensor:
    """(budget,) ascending: anchors with their buffers up to n_ab tokens, then registers."""
    chosen: dict[int, None] = {}  # insertion-ordered set
    for anchor in obj.argsort(descending=True, stable=True).tolist():
        if len(chosen) >= n_ab:
            break
        for m in [anchor] + neighbours(anchor, rows, cols):
            if len(chosen) < n_ab:
                chosen.setdefault(m)
    taken = torch.zeros_like(deep, dtype=torch.bool)
    taken[list(chosen)] = True
    registers = deep.masked_fill(taken, float("-inf")).topk(budget - len(chosen)).indices
    return torch.cat([torch.tensor(list(chosen), dtype=torch.long), registers]).sort().values
