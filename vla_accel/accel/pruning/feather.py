"""FEATHER (Fast and Effective Acceleration wiTH Ensemble cRiteria): FastV's criterion, fixed, in two stages.

The finding: FastV's early pruning keeps mostly tokens from the BOTTOM of the image, because RoPE makes
the last prompt token attend to the visual tokens nearest to it in position. FEATHER
  * scores with the last prompt token's head-averaged attention computed WITHOUT RoPE on the query and
    the keys (``rope_free=True``; False gives FastV's criterion),
  * at the first stage (layer 8 of 32) keeps the top tokens by that score together with a uniform
    spatial sample -- every ``stride``-th row and column of each camera's patch grid -- so the whole
    image stays covered,
  * at the second stage (layer 16 of 32) keeps the top tokens by the same criterion among those.
Budgets (the released code's ratio r = 0.3): r * M by attention + the grid at stage 1, r^2 * M at stage
2. Here the config's budget is stage 2's, so r = sqrt(M~ / M) (keep_ratio 0.09 = the paper's setting);
stage 1 keeps the grid plus the floor(r * M) best-scored other tokens -- a fixed count in every batch row,
a superset of the paper's union (top-r * M) U grid, which varies with how much the two overlap.
Layers: 8 and 16 of 32, scaled to the model's depth (``first_layer`` / ``second_layer`` override).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vla_accel.accel.pruning.base import (
    PruningMethod, SelectionContext, increasing_layers, scaled_layer, topk_indices,
)  # fmt: skip


def strided_grid(grid: tuple[int, int, int], stride: int, device=None) -> Tensor:
    """(G,) visual indices of rows and columns 0, stride, 2*stride, ... of every camera's grid, ascending."""
    cams, rows, cols = grid
    r = torch.arange(0, rows, stride, device=device)
    c = torch.arange(0, cols, stride, device=device)
    per_cam = (r[:, None] * cols + c[None, :]).flatten()
    return (torch.arange(cams, device=device)[:, None] * rows * cols + per_cam[None, :]).flatten()


def _grid_size(num_visual: int, stride: int) -> int:
    side = math.isqrt(num_visual)  # one camera; the runner's grid is the authority at selection time
    return math.ceil(side / stride) ** 2 if side * side == num_visual else 0


class Feather(PruningMethod):
    name = "feather"
    default_layer = 8  # the paper's first stage on a 32-layer Llama (scaled by stage_layers)
    _score_queries = "last"

    @dataclass(frozen=True)
    class Params:
        stride: int = 3  # uniform sample: every 3rd row and column (released code: "s=3")
        second_layer: int | None = None  # K_2; None = 16 of 32, scaled to the model's depth
        rope_free: bool = True  # score without RoPE (FEATHER's fix); False = FastV's criterion

        def __post_init__(self) -> None:
            if self.stride < 1:
                raise ValueError(f"feather: stride must be >= 1, got {self.stride}")

    @property
    def score_rope(self) -> bool:
        return not self.params.rope_free

    def stage_layers(self, first_layer: int | None, num_layers: int) -> tuple[int, ...]:
        k1 = scaled_layer(8, num_layers) if first_layer is None else first_layer
        if self.params.second_layer is not None:  # explicit layers are taken as given (resolve_plan checks)
            return (k1, self.params.second_layer)
        return increasing_layers([k1, scaled_layer(16, num_layers)], num_layers)

    def stage_budgets(self, num_visual: int, budget: int) -> tuple[int, ...]:
        by_attention = math.floor(math.sqrt(budget / num_visual) * num_visual)
        first = min(num_visual, by_attention + _grid_size(num_visual, self.params.stride))
        return (max(first, budget), budget)

    def select(self, ctx: SelectionContext) -> Tensor:
        scores = ctx.visual_attention
        if ctx.stage == 0:
            grid = strided_grid(ctx.require_grid("feather"), self.params.stride, scores.device)
            scores = scores.index_fill(1, grid, float("inf"))  # the uniform sample is always kept
            return topk_indices(scores, ctx.budget)
        return ctx.candidate_index().gather(1, topk_indices(scores, ctx.budget))
