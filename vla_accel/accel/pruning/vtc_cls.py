"""VTC-CLS ("[CLS] token tells everything needed"): FasterVLM's [CLS] criterion ensembled over layers.

score[m] = sum over the encoder blocks l = start_layer .. the feature layer of the [CLS] query's
head-averaged attention to patch m at block l (the released code sums the per-layer CLS rows from a
start layer up to the layer the features come from; its start layer is a per-benchmark script argument,
so ``start_layer=-4`` -- the last four blocks that run, or all of them in a shallower encoder -- is ours).
Top M~ before the LLM. Needs an encoder with a class token, like FasterVLM.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext, topk_indices
from vla_accel.accel.pruning.fastervlm import encoder_scores
from vla_accel.policies.common.vision import AttentionProbe


class VTCCLS(PruningMethod):
    name = "vtc_cls"
    default_layer = 0

    @dataclass(frozen=True)
    class Params:
        start_layer: int = -4  # first block of the ensemble, counted back from the feature layer (-1)
        encoder: int = 0

        def __post_init__(self) -> None:
            if self.start_layer >= 0:
                raise ValueError(f"vtc_cls: start_layer counts back from the feature layer (-1, -2, ...), "
                                 f"got {self.start_layer}")  # fmt: skip

    def _layers(self) -> tuple[int, ...]:
        return tuple(range(self.params.start_layer, 0))

    def encoder_attention_probe(self) -> AttentionProbe:
        return AttentionProbe(layers=self._layers(), kind="cls", encoder=self.params.encoder, clip=True)

    def select(self, ctx: SelectionContext) -> Tensor:
        return topk_indices(encoder_scores(ctx, self._layers()), ctx.budget)
