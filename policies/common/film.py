"""Instruction-conditioned FiLM in the vision tower (`VLMConfig.text_film`, off by default).

OpenVLA and CogACT encode the image without the instruction; the Llama combines them, and because its
attention is causal and the visual tokens come first, only the text tokens after them can do so. A
pretrained VLM has learnt that; a small one trained from scratch on a few hundred demos may not: on the
`object` and `spatial` suites, where the instruction only says *which* of the objects in view to take,
the input probe's instruction gap stayed at zero (README, "Trained policies"). RT-1 and BAKU condition
their vision encoders on the instruction with FiLM (Perez et al. 2018) for this reason. Here every ViT
block's output is modulated per channel, `x * (1 + scale(c)) + shift(c)`, where `c` is the mean of the
Llama's input embeddings of the instruction tokens, standardised over the batch (standardizer.py): the
instructions of a suite differ in one or two of ~11 tokens, so the part of that mean which differs
between them is a small fraction of the shared part.
then scaled to unit norm (see `forward`). The linears start at zero, so a new model starts as the
plain one. The prompt layout, the visual tokens' count and everything the pruners see are unchanged.
Measured: on object and spatial it did not move the instruction gap within 2500 steps either (README).
"""

from __future__ import annotations

import torch
from torch import nn

from vla_accel.policies.common.standardizer import FeatureStandardizer

Modulation = list[tuple[torch.Tensor, torch.Tensor]]  # per ViT block: (scale, shift), each (B, width)


class TextFiLM(nn.Module):
    def __init__(self, cond_dim: int, widths: list[int], depths: list[int]) -> None:
        """widths/depths: per vision encoder, its width and the number of blocks that run."""
        super().__init__()
        # eps far below the default: the per-feature variance of this mean over a suite's instructions
        # was 6e-7 to 2e-5 (object suite, step 500 of a run), the default eps is 1e-5.
        self.cond_norm = FeatureStandardizer(cond_dim, eps=1e-10)
        self.encoders = nn.ModuleList(
            nn.ModuleList(nn.Linear(cond_dim, 2 * w) for _ in range(d)) for w, d in zip(widths, depths)
        )
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, cond: torch.Tensor) -> list[Modulation]:
        """cond (B, cond_dim), the raw instruction embedding -> per encoder, per block, (scale, shift)."""
        # Unit norm, not unit variance per feature: AdamW moves every weight by ~lr per step even while
        # its gradient is noise, so with a unit-variance input the modulation random-walked to +-1
        # within 500 steps (measured) and swamped the image's own variation in the ViT features.
        cond = self.cond_norm(cond) / cond.shape[-1] ** 0.5
        return [[tuple(layer(cond).chunk(2, dim=-1)) for layer in blocks] for blocks in self.encoders]


def instruction_embedding(token_embeds: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the instruction tokens' embeddings: token_embeds (B, T, D), text_mask (B, T) -> (B, D)."""
    mask = text_mask.to(token_embeds.dtype)[..., None]
    count = mask.sum(1)
    if bool((count == 0).any()):
        raise ValueError("text_film needs at least one instruction token per row")
    return (token_embeds * mask).sum(1) / count
