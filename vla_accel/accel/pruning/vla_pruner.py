"""VLA-Pruner (arXiv 2511.16449): temporal-aware dual-level visual-token pruning.

semantic score S_vl (B, M): mean over the prefill queries of their head-averaged attention to each visual
    token at layer K-1. ``semantic_queries="all"`` (paper: all N+M real prefill tokens) or ``"last"``
    (the released code's default, FastV-style).
action score S^_act (B, M): the current step's action attention is unknown at prefill time, so it is
    estimated from the previous w steps: sum_{i=1..w} gamma^i * S_act(t-i), normalised to sum 1 per row.
    ``temporal_order="newest_first"`` (paper: step t-1 gets gamma^1, the largest weight) or
    ``"oldest_first"`` (the released code: step t-w gets gamma^1). A token pruned at step t-i has no
    action score for that step (0): the runner zeroes every token not kept at that step before
    ``observe_step`` (needed when the action layer comes before K and so still sees the pruned tokens).
selection ("combine then filter"): top-M~ by S_vl union top-M~ by S^_act; if the union holds more than
    M~ tokens, keep M~ of them by greedy max-min diversity over the cosine distance of the tokens' input
    embeddings. The union of two M~-sets can never hold fewer than M~ tokens, so no filling is needed.
warm-up: no pruning until w steps of action history exist. History is per episode (``reset``) and per
    batch row (row b of every stored (B, M) tensor), so the batch size must not change within an episode:
    ``wants_to_prune`` and ``observe_step`` check it against every stored step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext
from vla_accel.accel.pruning.diversity import greedy_max_min

TEMPORAL_ORDERS = ("newest_first", "oldest_first")


class VLAPruner(PruningMethod):
    name = "vla_pruner"
    default_layer = 2  # the paper's K = 3 (1-indexed first pruned layer): 2 full layers, scores from layer 1
    needs_action_attention = True

    @dataclass(frozen=True)
    class Params:
        window: int = 3
        gamma: float = 0.8
        semantic_queries: str = "all"
        temporal_order: str = "newest_first"
        # layer whose attention gives S_act; None -> max(K, num_layers // 2 - 1), clipped to the last
        # executed layer (config._action_layer); one before K is allowed: the runner zeroes pruned tokens
        action_layer: int | None = None

        def __post_init__(self) -> None:
            if self.window < 1:
                raise ValueError(f"vla_pruner: window must be >= 1, got {self.window}")
            if not 0.0 < self.gamma <= 1.0:
                raise ValueError(f"vla_pruner: gamma must be in (0, 1], got {self.gamma}")
            if self.semantic_queries not in ("all", "last"):
                raise ValueError(
                    f"vla_pruner: semantic_queries must be one of ['all', 'last'], got {self.semantic_queries!r}"
                )
            if self.temporal_order not in TEMPORAL_ORDERS:
                raise ValueError(
                    f"vla_pruner: temporal_order must be one of {list(TEMPORAL_ORDERS)}, got {self.temporal_order!r}"
                )
            if self.action_layer is not None and self.action_layer < 0:
                raise ValueError(f"vla_pruner: action_layer must be >= 0, got {self.action_layer}")

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._history: deque[Tensor] = deque(maxlen=self.params.window)  # (B, M) per step, newest last

    @property
    def score_queries(self) -> str:
        return self.params.semantic_queries

    def reset(self) -> None:
        self._history.clear()

    def wants_to_prune(self, batch_size: int) -> bool:
        self._check_batch(batch_size)  # also during warm-up: a changed B would be broadcast silently later
        return len(self._history) >= self.params.window

    def observe_step(self, action_attention: Tensor) -> None:
        self._check_batch(action_attention.shape[0])
        self._history.append(action_attention.detach().float())

    def _check_batch(self, batch_size: int) -> None:
        """Every stored step must have ``batch_size`` rows: row b of the history is episode b."""
        sizes = sorted({h.shape[0] for h in self._history} - {batch_size})
        if sizes:
            raise ValueError(
                f"vla_pruner: batch size changed from {sizes[0]} to {batch_size} within an episode; "
                "call reset() at every episode start"
            )

    def temporal_weights(self) -> list[float]:
        """Weights of the stored steps, oldest first (matching the history's order)."""
        n, g = len(self._history), self.params.gamma
        if self.params.temporal_order == "newest_first":
            return [g ** (n - j) for j in range(n)]  # newest (j = n-1) -> gamma^1
        return [g ** (j + 1) for j in range(n)]  # oldest (j = 0) -> gamma^1

    def action_estimate(self) -> Tensor:
        """S^_act: (B, M), each row normalised to sum 1 (an all-zero row stays zero)."""
        est = sum(w * h for w, h in zip(self.temporal_weights(), self._history))
        return est / est.sum(-1, keepdim=True).clamp_min(torch.finfo(est.dtype).tiny)

    def select(self, ctx: SelectionContext) -> Tensor:
        budget = ctx.budget
        semantic = ctx.visual_attention  # (B, M)
        action = self.action_estimate().to(semantic.device)  # (B, M)
        union = torch.zeros_like(semantic, dtype=torch.bool)
        union.scatter_(1, semantic.topk(budget, dim=-1).indices, True)
        union.scatter_(1, action.topk(budget, dim=-1).indices, True)
        return greedy_max_min(ctx.visual_embeds, budget, candidates=union)
