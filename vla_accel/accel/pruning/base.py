"""The one small interface every visual-token pruning method implements.

A method declares what it needs from the runner (class attributes / properties):

- ``score_queries``: which prefill queries' attention it ranks visual tokens by, read at the layer just
  before the pruning layer: ``"last"`` (the last prefill token, FastV), ``"text"`` (the instruction's
  text tokens), ``"all"`` (every real prefill token) or ``None`` (it needs no attention).
- ``default_layer``: the pruning layer K = the number of layers that see every token (the convention
  and each paper's conversion: ``vla_accel.accel.config.TokenPruningConfig``). ``0``: before the LLM.
- ``needs_action_attention``: whether the runner must capture the action queries' attention to the
  visual tokens at a late layer and hand it to :meth:`observe_step` once per control step.

and answers :meth:`select` with the kept visual indices of every batch row.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

SCORE_QUERIES = ("last", "text", "all")


@dataclass
class SelectionContext:
    """What a method may look at when it picks the visual tokens of one prefill.

    visual_embeds:    (B, M, D) the visual tokens' input embeddings (projector output, before layer 0)
    visual_attention: (B, M) float32, mean over the method's queries of the head-averaged attention they
                      pay each visual token at the score layer; None when the method asked for none
    budget:           M~, how many visual tokens every row keeps (the same for all rows)
    """

    visual_embeds: Tensor
    visual_attention: Tensor | None
    budget: int

    @property
    def batch_size(self) -> int:
        return self.visual_embeds.shape[0]

    @property
    def num_visual(self) -> int:
        return self.visual_embeds.shape[1]


class PruningMethod(ABC):
    """Base class: subclasses set ``name`` and ``Params`` (a dataclass of their knobs) and ``select``."""

    name: ClassVar[str]
    default_layer: ClassVar[int] = 3
    needs_action_attention: ClassVar[bool] = False
    _score_queries: ClassVar[str | None] = None

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, **params: Any) -> None:
        valid = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(params) - valid)
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for pruning method {self.name!r}; valid: {sorted(valid) or 'none'}"
            )
        self.params = self.Params(**params)

    @property
    def score_queries(self) -> str | None:
        return self._score_queries

    def wants_to_prune(self, batch_size: int) -> bool:
        """False while the method cannot prune yet (VLA-Pruner's warm-up); the step then runs unpruned."""
        return True

    @abstractmethod
    def select(self, ctx: SelectionContext) -> Tensor:
        """Kept visual-token indices, (B, budget) long in [0, M), sorted ascending per row."""

    def observe_step(self, action_attention: Tensor) -> None:
        """One finished control step's action attention to the visual tokens, (B, M) (pruned tokens 0)."""

    def reset(self) -> None:
        """Episode boundary: forget any temporal state."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


def topk_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores per row, sorted ascending by index: (B, N) -> (B, k) long."""
    return scores.topk(k, dim=-1).indices.sort(dim=-1).values


def min_max_normalise(x: Tensor) -> Tensor:
    """Per-row min-max normalisation of (B, N) to [0, 1]; a constant row becomes all zeros."""
    lo = x.min(dim=-1, keepdim=True).values
    hi = x.max(dim=-1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
