"""FasterVLM: keep the visual tokens the vision encoder's [CLS] token attends to most, before the LLM.

score[m] = the [CLS] query's head-averaged softmax attention to patch m in the encoder block whose output
the projector reads (LLaVA: the penultimate CLIP layer; OpenVLA: the second-to-last DINOv2 block, which is
``encoder_layer=-1``, the last block that runs: vision.AttentionProbe). Top M~, pruned before layer 0.
Needs an encoder with a class token: ``accelerate()`` refuses a policy whose encoder has none, by name.
With several cameras each camera's [CLS] scores its own patches and the top M~ is taken over all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext, topk_indices
from vla_accel.policies.common.vision import AttentionProbe


class FasterVLM(PruningMethod):
    name = "fastervlm"
    default_layer = 0  # before the LLM: every layer sees only the kept tokens

    @dataclass(frozen=True)
    class Params:
        encoder_layer: int = -1  # the block whose [CLS] row ranks the patches (-1: the feature layer)
        encoder: int = 0  # of a fused backbone: 0 = the featurizer (OpenVLA's DINOv2, which has a [CLS])

    def encoder_attention_probe(self) -> AttentionProbe:
        return AttentionProbe(layers=(self.params.encoder_layer,), kind="cls", encoder=self.params.encoder)

    def select(self, ctx: SelectionContext) -> Tensor:
        scores = encoder_scores(ctx, (self.params.encoder_layer,))
        return topk_indices(scores, ctx.budget)


def encoder_scores(ctx: SelectionContext, keys) -> Tensor:
    """(B, C) the sum of the probed maps ``keys`` over the current candidates (a later stage sees fewer)."""
    if not ctx.encoder_attention:
        raise ValueError("no encoder attention maps reached the pruning method")
    maps = [ctx.encoder_attention[k] for k in keys if k in ctx.encoder_attention]
    total = sum(maps[1:], maps[0]).to(ctx.visual_embeds.device)  # (B, M)
    return total.gather(1, ctx.candidate_index()) if ctx.candidates is not None else total
