"""Control: keep M~ visual tokens drawn uniformly at random (seeded; independent per row)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext, topk_indices


class RandomSelect(PruningMethod):
    name = "random"
    default_layer = 0

    @dataclass(frozen=True)
    class Params:
        seed: int = 0

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.reset()

    def reset(self) -> None:
        # A fresh generator per episode makes an episode's draws reproducible whatever ran before it.
        self._gen = torch.Generator().manual_seed(self.params.seed)

    def select(self, ctx: SelectionContext) -> Tensor:
        keys = torch.rand(ctx.batch_size, ctx.num_visual, generator=self._gen)  # (B, M), drawn on the CPU
        return topk_indices(keys, ctx.budget).to(ctx.visual_embeds.device)
