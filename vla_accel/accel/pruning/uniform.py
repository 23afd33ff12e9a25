"""Control: keep M~ visual tokens spread evenly over the image.

The visual tokens are a raster-ordered grid (row-major patches). We take M~ indices evenly spaced in
raster order, each at the centre of its stride: this covers every image row band and, when the stride is
not a multiple of the grid width, staggers the columns from row to row. Content is never looked at.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext


def even_raster_indices(num_visual: int, budget: int) -> Tensor:
    """(budget,) long, strictly increasing, evenly spread over [0, num_visual)."""
    stride = num_visual / budget
    idx = torch.floor(torch.arange(budget, dtype=torch.float64) * stride + stride / 2).long()
    return idx.clamp_(0, num_visual - 1)


class UniformGrid(PruningMethod):
    name = "uniform"
    default_layer = 0

    def select(self, ctx: SelectionContext) -> Tensor:
        idx = even_raster_indices(ctx.num_visual, ctx.budget).to(ctx.visual_embeds.device)
        return idx.expand(ctx.batch_size, -1).clone()
