"""EfficientVLA's visual-token selection (arXiv 2506.10100), 256 -> K_final.

relevance r_i = attention the instruction tokens pay visual token i (head-averaged, summed over the
instruction tokens -- we use their mean, which min-max normalisation makes identical), min-max normalised.
  V_key  = the top K_key tokens by relevance;
  V_task = the next floor(alpha * (K_final - K_key)) tokens by relevance;
  V_div  = the remaining K_final - K_key - K_task tokens, chosen among the rest as those that maximise
           1 - max_{k in V_key} cos(v_j, v_k) (diversity against the key set).
The paper does not state alpha; 0.5 is our default (a parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext, min_max_normalise


class EfficientVLATokens(PruningMethod):
    name = "efficientvla_tokens"
    default_layer = 3
    _score_queries = "text"

    @dataclass(frozen=True)
    class Params:
        k_key: int = 4
        alpha: float = 0.5

        def __post_init__(self) -> None:
            if self.k_key < 1:
                raise ValueError(f"efficientvla_tokens: k_key must be >= 1, got {self.k_key}")
            if not 0.0 <= self.alpha <= 1.0:
                raise ValueError(f"efficientvla_tokens: alpha must be in [0, 1], got {self.alpha}")

    def select(self, ctx: SelectionContext) -> Tensor:
        budget = ctx.budget
        k_key = min(self.params.k_key, budget)
        k_task = int(self.params.alpha * (budget - k_key))
        k_div = budget - k_key - k_task
        relevance = min_max_normalise(ctx.visual_attention)  # (B, M)
        order = relevance.argsort(dim=-1, descending=True, stable=True)  # (B, M)
        key = order[:, :k_key]
        task = order[:, k_key : k_key + k_task]
        if k_div == 0:
            return torch.cat([key, task], dim=-1).sort(dim=-1).values
        v = F.normalize(ctx.visual_embeds.float(), dim=-1)  # (B, M, D)
        v_key = v.gather(1, key[..., None].expand(-1, -1, v.shape[-1]))  # (B, K_key, D)
        diversity = 1.0 - (v @ v_key.transpose(1, 2)).amax(-1)  # (B, M)
        taken = torch.zeros_like(relevance, dtype=torch.bool)
        taken.scatter_(1, order[:, : k_key + k_task], True)
        diversity = diversity.masked_fill(taken, float("-inf"))
        div = diversity.topk(k_div, dim=-1).indices
        return torch.cat([key, task, div], dim=-1).sort(dim=-1).values
