"""TransPrune (arXiv 2507.20630): token transition variation + instruction-guided attention, in stages.

Token transition variation (TTV): how much a visual token's representation changes as it passes through
a module -- each decoder layer's attention and MLP sublayer, with input x (after the layer's RMSNorm) and
output f(x) (the update added to the residual):
    magnitude  ||f(x)|| / ||x||
    direction  1 - cos(x, f(x)), made a distribution over the tokens by a softmax
    TTV_module = magnitude * softmax_tokens(direction);  TTV_layer = TTV_attention + TTV_mlp
accumulated (summed) over the layers from the last full layer before the first stage up to the layer
before the current stage (released code: layers 7..12 of 32, 1-indexed).
Instruction-guided attention (IGA): the mean over the instruction's text tokens of their head-averaged
attention to each visual token. Score = TTV / sum(TTV) + IGA / sum(IGA) over the tokens still kept
(equal weights, as released; ``iga_weight`` w gives (1 - w) * TTV + w * IGA, so 0.5 is that score up to a
factor, and w = 0 is the paper's attention-free "TTV alone" variant).
Progressive: the released LLaVA setting prunes after layers 7, 9 and 12 (1-indexed) of 32 to 87.5%,
62.5% and 12.5% of the visual tokens. In ``TokenPruningConfig``'s convention (K = the number of layers
that see the tokens) that is K = 7, 9, 12, scaled to the model's depth. Budgets (``schedule``):
"released" drops the same shares of the removed tokens at each stage, 1/7, 3/7 and all of M - M~ --
exactly 87.5/62.5/12.5% at the paper's keep ratio 0.125, for three stages; "geometric" keeps
M * (M~/M)^(s/n) at stage s of n (any number of stages).

Where this differs from the released code, and why:
* TTV is measured on layers that ran before the stage (the last one is K-1), since the stage cuts before
  layer K runs; the released code does the same (its transitions are those of the layers up to the cut).
* IGA is read at layer K-1's attention, the runner's convention for every attention criterion; the
  released code evaluates layer K's query/key projections on layer K-1's output (one layer later).
* The direction softmax runs over the visual tokens still kept of each row; the released code's runs
  over every position of the (batch-1) sequence. It only rescales each module's contribution.
* Kept tokens keep their original position ids (the project's rule); the released code renumbers them.

What TTV picks on a small from-scratch policy (2026-12-02, cogact_deep step 9000, 128 visual tokens, keep
0.25, 32 demo frames; offline, against the unpruned policy with the same noise): the same tokens in every
frame, by their place in the image rather than what it shows (tokens 4-22, the agentview image's top
rows, in the top 32 of all 32 frames; still tokens 2-26 with the image flipped upside down), and its
magnitude term is the harmful part (cognition-feature error 0.505 vs 0.443 for TTV, 0.245 for FastV and
0.187 for a random choice at the same stages). In closed loop that was 0/100 with TTV alone. The
formula, layers and stages were checked term by term against the paper and its released code
(tests/accel/pruning/test_transprune.py checks them against a staged reference): no bug explains it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vla_accel.accel.pruning.base import (
    PruningMethod, SelectionContext, increasing_layers, scaled_layer, topk_indices,
)  # fmt: skip

PAPER_LAYERS = (7, 9, 12)  # K of the three stages on a 32-layer LLM (pruning after these 1-indexed layers)
RELEASED_SHARES = (1 / 7, 3 / 7, 1.0)  # share of the M - M~ removed tokens dropped by each stage
SCHEDULES = ("released", "geometric")


class TransPrune(PruningMethod):
    name = "transprune"
    default_layer = 7  # K_1 on a 32-layer LLM (scaled by stage_layers)

    @dataclass(frozen=True)
    class Params:
        later_layers: tuple[int, ...] | None = None  # K_2, K_3, ...; None = 9 and 12 of 32, scaled
        schedule: str = "released"
        iga_weight: float = 0.5  # 0: TTV alone (no attention is computed)

        def __post_init__(self) -> None:
            if self.schedule not in SCHEDULES:
                raise ValueError(f"transprune: schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
            if not 0.0 <= self.iga_weight <= 1.0:
                raise ValueError(f"transprune: iga_weight must be in [0, 1], got {self.iga_weight}")
            if self.later_layers is not None:  # Hydra hands a list
                object.__setattr__(self, "later_layers", tuple(int(k) for k in self.later_layers))

    @property
    def score_queries(self) -> str | None:
        return "text" if self.params.iga_weight > 0 else None

    def stage_layers(self, first_layer: int | None, num_layers: int) -> tuple[int, ...]:
        k1 = scaled_layer(PAPER_LAYERS[0], num_layers) if first_layer is None else first_layer
        if self.params.later_layers is not None:  # explicit layers are taken as given (resolve_plan checks)
            return (k1, *self.params.later_layers)
        return increasing_layers([k1] + [scaled_layer(k, num_layers) for k in PAPER_LAYERS[1:]], num_layers)

    def stage_budgets(self, num_visual: int, budget: int) -> tuple[int, ...]:
        n = len(self.params.later_layers or PAPER_LAYERS[1:]) + 1
        if self.params.schedule == "released":
            if n != len(RELEASED_SHARES):
                raise ValueError(f"transprune: the released schedule has 3 stages, got {n}; use schedule=geometric")
            removed = num_visual - budget
            raw = [num_visual - round(share * removed) for share in RELEASED_SHARES]
        else:
            raw = [round(num_visual * (budget / num_visual) ** ((s + 1) / n)) for s in range(n)]
        out: list[int] = []
        for b in raw[:-1] + [budget]:  # clipped to [budget, M] and non-increasing; the last is the budget
            out.append(min(max(b, budget), out[-1] if out else num_visual))
        return tuple(out)

    def transition_layers(self, stage_layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
        if stage_layers[0] < 1:
            raise ValueError("transprune: the first stage needs a layer before it to measure transitions (K >= 1)")
        return tuple(range(stage_layers[0] - 1, stage_layers[-1]))

    def transition_score(self, sublayers: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        return sum(module_ttv(x, fx) for x, fx in sublayers.values())

    def select(self, ctx: SelectionContext) -> Tensor:
        cand = ctx.candidate_index()  # (B, C)
        if not ctx.transition_scores:
            raise ValueError("transprune: no layer transitions were recorded before this stage")
        ttv = sum(ctx.transition_scores.values()).gather(1, cand)  # (B, C) accumulated over the layers so far
        score = (1.0 - self.params.iga_weight) * _unit_sum(ttv)
        if self.params.iga_weight > 0:
            score = score + self.params.iga_weight * _unit_sum(ctx.visual_attention.float())
        return cand.gather(1, topk_indices(score, ctx.budget))  # candidates ascending -> sorted


def module_ttv(x: Tensor, fx: Tensor) -> Tensor:
    """(B, C) TTV of one module over the C tokens: ||f(x)|| / ||x|| * softmax over the tokens of
    (1 - cos(x, f(x))); x, fx (B, C, D)."""
    x, fx = x.float(), fx.float()
    magnitude = fx.norm(dim=-1) / x.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    direction = 1.0 - F.cosine_similarity(x, fx, dim=-1)
    return magnitude * direction.softmax(dim=-1)


def _unit_sum(x: Tensor) -> Tensor:
    """Each row divided by its sum (the released code's normalisation; an all-zero row stays zero)."""
    return x / x.sum(-1, keepdim=True).clamp_min(1e-8)
