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

Methods that need more declare it through these hooks (each off by default, so no cost otherwise):

- :meth:`encoder_attention_probe`: a ``vision.AttentionProbe`` -- the vision tower then hands the
  runner the attention maps of those encoder blocks (``SelectionContext.encoder_attention``).
- multi-stage pruning: :meth:`stage_layers` (K_1 < K_2 < ...) and :meth:`stage_budgets` (M~_1 >= M~_2
  >= ... = the config's budget, the tokens the deepest layers see). Stage s keeps a subset of stage
  s-1's tokens; its scores are read at the last executed layer before K_s, over the tokens still kept
  (``SelectionContext.candidates``); :meth:`stage_queries` says whose attention, per stage.
- :meth:`transition_layers`: LLM layers whose visual tokens' hidden-state transitions the runner scores
  with :meth:`transition_score` (TransPrune's TTV) into ``SelectionContext.transition_scores``: for each
  sublayer ("attention", "mlp") its input (after the layer's RMSNorm) and its output (the residual
  update), as the layer computed them.
- token merging (SparseVLM's recycling): :meth:`select_and_merge` answers the kept indices plus, per
  candidate token, the kept token it is averaged into (``needs_visual_hidden``: the runner then hands
  the candidates' hidden states entering layer K in ``SelectionContext.visual_hidden``).
- per-step budgets (adaptive wrappers, ``pruning/adaptive.py``): :meth:`step_budget` may change this
  control step's M~; :meth:`observe_actions` receives the actions the policy produced at each step.
"""

from __future__ import annotations

import dataclasses
import math
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
    stage: int = 0  # which pruning stage (0 = the first)
    # (B, C) long, ascending: the visual indices (in [0, M)) still kept before this stage; None = all M.
    # When set, ``visual_attention`` is (B, C), aligned with it, and the answer must be a subset of it.
    candidates: Tensor | None = None
    encoder_attention: dict[int, Tensor] | None = None  # encoder block -> (B, M) (the method's probe)
    transition_scores: dict[int, Tensor] | None = None  # LLM layer -> (B, M), 0 where a token was absent
    # (B, C, D) the candidates' hidden states entering layer K (only when the method's
    # ``needs_visual_hidden``; before the LLM: their input embeddings); None otherwise
    visual_hidden: Tensor | None = None
    grid: tuple[int, int, int] | None = None  # (cameras, rows, cols) of the patch grid; None if not square

    @property
    def batch_size(self) -> int:
        return self.visual_embeds.shape[0]

    @property
    def num_visual(self) -> int:
        return self.visual_embeds.shape[1]

    def candidate_index(self) -> Tensor:
        """(B, C) the tokens this stage chooses from (every visual token at the first stage)."""
        if self.candidates is not None:
            return self.candidates
        B, M = self.visual_embeds.shape[:2]
        return torch.arange(M, device=self.visual_embeds.device).expand(B, M)

    def require_grid(self, who: str) -> tuple[int, int, int]:
        if self.grid is None:
            raise ValueError(f"{who} needs the visual tokens to form square per-camera patch grids; "
                             f"{self.num_visual} tokens do not")
        return self.grid


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

    @property
    def score_rope(self) -> bool:
        """Whether the ranking attention uses RoPE like the layer itself (False: FEATHER's criterion)."""
        return True

    def wants_to_prune(self, batch_size: int) -> bool:
        """False while the method cannot prune yet (VLA-Pruner's warm-up); the step then runs unpruned."""
        return True

    @property
    def needs_visual_hidden(self) -> bool:
        """Whether :meth:`select_and_merge` reads ``ctx.visual_hidden`` (the runner gathers it only then)."""
        return False

    @property
    def action_layer(self) -> int | None:
        """The explicit layer of the action-attention capture (VLA-Pruner's ``action_layer``), or None."""
        return getattr(self.params, "action_layer", None)

    @abstractmethod
    def select(self, ctx: SelectionContext) -> Tensor:
        """Kept visual-token indices, (B, budget) long in [0, M), sorted ascending per row."""

    def select_and_merge(self, ctx: SelectionContext) -> tuple[Tensor, Tensor | None]:
        """(kept, merge_into): ``kept`` as :meth:`select`; ``merge_into`` (B, C) long, aligned with
        ``ctx.candidate_index()``: the visual index of the kept token each candidate is averaged into, -1
        for none (None: no merging, the default). A kept token that some candidates name continues from
        layer K with the mean of their hidden states, at its own original position id."""
        return self.select(ctx), None

    def step_budget(self, num_visual: int, budget: int) -> int:
        """This control step's M~ (in [1, M]; M = the step runs unpruned) given the config's ``budget``."""
        return budget

    def observe_actions(self, actions: Tensor) -> None:
        """The actions the policy produced at the step just finished, (B, H, A) normalised to [-1, 1]
        (H: the executed part of a chunk; 1 for OpenVLA)."""

    def encoder_attention_probe(self) -> Any:
        """A fresh ``vision.AttentionProbe`` naming the encoder blocks whose attention this method reads,
        or None (the default: the vision tower runs its plain forward)."""
        return None

    def stage_layers(self, first_layer: int | None, num_layers: int) -> tuple[int, ...]:
        """K of every stage, strictly increasing; ``first_layer`` is the config's ``layer`` (None = the
        method's default). One stage by default."""
        return (self.default_layer if first_layer is None else first_layer,)

    def stage_budgets(self, num_visual: int, budget: int) -> tuple[int, ...]:
        """M~ of every stage, non-increasing, the last = ``budget`` (the config's)."""
        return (budget,)

    def stage_queries(self, stage: int) -> str | None:
        """Whose attention stage ``stage`` ranks by (``SCORE_QUERIES`` or None)."""
        return self.score_queries

    def transition_layers(self, stage_layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
        """LLM layers whose visual-token transitions feed :meth:`transition_score` (none by default)."""
        return ()

    def transition_score(self, sublayers: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """(B, C) per-token score of one layer's transition: ``sublayers`` maps "attention" and "mlp" to
        (input, output) of that sublayer for the C visual tokens still kept, each (B, C, D): the input
        after the layer's RMSNorm, the output before the residual add."""
        raise NotImplementedError

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


def scaled_layer(paper_layer: int, num_layers: int, paper_depth: int = 32) -> int:
    """A paper's layer index for a ``paper_depth``-layer LLM (Llama-2-7B: 32) at the same relative depth
    of a ``num_layers``-layer one: exact on 32 layers, at least 1 (a stage that reads attention needs a
    layer before it)."""
    return max(1, round(paper_layer * num_layers / paper_depth))


def increasing_layers(layers: list[int], num_layers: int) -> tuple[int, ...]:
    """Scaled default stage layers made strictly increasing (a shallow model would map two stages to one
    layer); resolve_plan refuses what still does not fit ``num_layers``."""
    out: list[int] = []
    for k in layers:
        out.append(max(k, out[-1] + 1) if out else k)
    return tuple(out)


def ratio_budget(num_visual: int, ratio: float) -> int:
    """round(M * ratio), clipped to [1, M]."""
    return max(1, min(num_visual, int(math.floor(num_visual * ratio + 0.5))))
