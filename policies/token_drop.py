"""Pruning-robust training: the cognition forward with visual tokens dropped before layer K.

A policy trained only on full prompts has never seen its layers >= K run on a quarter of the visual
tokens, and visual-token pruning costs it success. This trains on what the accelerator's runner does at
inference: layers < K see the whole prompt, then every non-visual token plus a subset of the visual ones
go on, in prompt order and with their ORIGINAL position ids (vla_accel/accel/runner.py). The subset is
drawn uniformly at random, so the policy learns to act on whatever subset a pruning method keeps rather
than on one method's choice. Off by default (`train.token_drop_prob=0`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import LlamaModel
from transformers.masking_utils import create_causal_mask

from vla_accel.policies.common.hf_compat import cache_kwarg
from vla_accel.policies.common.prompt import kept_token_index


@dataclass(frozen=True)
class TokenDrop:
    prob: float  # the share of training steps whose prompts are cut
    layer: int  # K: the first layer that runs on the cut prompt
    keep_ratios: tuple[float, ...]  # a cut step keeps round(ratio * M) visual tokens, ratio drawn from these

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"train.token_drop_prob must be in [0, 1], got {self.prob}")
        if self.layer < 1:
            raise ValueError(f"train.token_drop_layer must be >= 1 (layer 0 would see no full prompt), got {self.layer}")
        if not self.keep_ratios or not all(0.0 < r < 1.0 for r in self.keep_ratios):
            raise ValueError(f"train.token_drop_keep must be ratios in (0, 1), got {list(self.keep_ratios)}")

    def draw(self, batch: int, num_visual: int, generator: torch.Generator) -> Tensor | None:
        """This step's kept visual indices (B, M~), ascending, each row its own subset; None: no cut."""
        if self.prob == 0.0 or float(torch.rand(1, generator=generator)) >= self.prob:
            return None
        ratio = self.keep_ratios[int(torch.randint(len(self.keep_ratios), (1,), generator=generator))]
        budget = max(1, round(ratio * num_visual))
        keys = torch.rand(batch, num_visual, generator=generator)
        return keys.topk(budget, dim=1).indices.sort(dim=1).values


def check_drop_layer(layer: int, n_layers: int) -> None:
    """K must leave at least one layer before and one after the cut."""
    if not 1 <= layer < n_layers:
        raise ValueError(f"token drop layer must be in [1, {n_layers - 1}] for a {n_layers}-layer Llama, got {layer}")


def forward_with_dropped_tokens(model: LlamaModel, inputs_embeds: Tensor, attention_mask: Tensor,
                                position_ids: Tensor, visual_start: Tensor, num_visual: int, kept: Tensor,
                                layer: int) -> Tensor:
    """The final-normed last hidden states (B, T', D) of `model` (a LlamaModel) when only the non-visual
    tokens and the visual ones in `kept` (B, M~) enter layers >= `layer`; differentiable."""
    check_drop_layer(layer, len(model.layers))
    x, mask2d, pos = inputs_embeds, attention_mask, position_ids

    def mask_and_rotary():
        causal = create_causal_mask(config=model.config, inputs_embeds=x, attention_mask=mask2d,
                                    **cache_kwarg(create_causal_mask, None), position_ids=pos)
        return causal, model.rotary_emb(x, pos)

    causal, pos_emb = mask_and_rotary()
    for i, block in enumerate(model.layers):
        if i == layer:
            rows = kept_token_index(x.shape[1], visual_start, num_visual, kept)
            x = x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))
            mask2d, pos = mask2d.gather(1, rows), pos.gather(1, rows)
            causal, pos_emb = mask_and_rotary()
        x = block(x, attention_mask=causal, position_embeddings=pos_emb, position_ids=pos)
    return model.norm(x)
