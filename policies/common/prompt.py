"""Assemble left-padded multimodal prompts: `[pads][BOS][M visual][prompt text][suffix]` per row.

The M visual positions hold the pad id in `input_ids` and are overwritten by the projected patch
embeddings (`scatter_visual`). Position ids are cumsum(attention_mask) - 1 (pads clamped to 0), so a
row gets the same positions in a batch as alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # (B, T) long; visual slots hold pad_id
    attention_mask: torch.Tensor  # (B, T) long, 1 = real token
    visual_start: torch.Tensor  # (B,) long, index of the first visual token
    text_mask: torch.Tensor  # (B, T) bool, the instruction's text tokens
    num_visual: int

    @property
    def position_ids(self) -> torch.Tensor:
        return positions_from_mask(self.attention_mask)

    def to(self, device) -> "PromptBatch":
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           self.visual_start.to(device), self.text_mask.to(device), self.num_visual)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def build_prompt_batch(text_ids: list[list[int]], instr_masks: list[list[bool]], num_visual: int,
                       bos_id: int, pad_id: int, suffix_ids: list[list[int]] | None = None) -> PromptBatch:
    """text_ids: the prompt's token ids per row; instr_masks: which of them are the instruction;
    suffix_ids: tokens after the prompt (CogACT's cognition token; the action tokens in training)."""
    b = len(text_ids)
    suffix_ids = suffix_ids or [[] for _ in range(b)]
    lengths = [1 + num_visual + len(t) + len(s) for t, s in zip(text_ids, suffix_ids)]
    t_max = max(lengths)
    input_ids = torch.full((b, t_max), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, t_max), dtype=torch.long)
    text_mask = torch.zeros((b, t_max), dtype=torch.bool)
    visual_start = torch.zeros(b, dtype=torch.long)
    for i, (text, instr, suffix, n) in enumerate(zip(text_ids, instr_masks, suffix_ids, lengths)):
        start = t_max - n  # left padding
        row = [bos_id] + [pad_id] * num_visual + list(text) + list(suffix)
        input_ids[i, start:] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, start:] = 1
        visual_start[i] = start + 1
        t0 = start + 1 + num_visual
        text_mask[i, t0 : t0 + len(text)] = torch.tensor(instr, dtype=torch.bool)
    return PromptBatch(input_ids, attention_mask, visual_start, text_mask, num_visual)


def scatter_visual(token_embeds: torch.Tensor, visual: torch.Tensor, visual_start: torch.Tensor) -> torch.Tensor:
    """token_embeds (B, T, D), visual (B, M, D) -> (B, T, D) with the visual slots filled."""
    b, m = visual.shape[:2]
    idx = visual_start[:, None] + torch.arange(m, device=visual.device)[None]  # (B, M)
    idx = idx[..., None].expand(b, m, token_embeds.shape[-1])
    return token_embeds.scatter(1, idx, visual.to(token_embeds.dtype))


def kept_token_index(T: int, visual_start: torch.Tensor, num_visual: int, kept: torch.Tensor) -> torch.Tensor:
    """(B, T - M + M~) long: every non-visual prompt index plus the kept visual ones (kept: (B, M~) visual
    indices), ascending -- the rows a visual-token-pruned prompt keeps, at inference and in training."""
    B = kept.shape[0]
    keep = torch.ones(B, T, dtype=torch.bool, device=kept.device)
    visual = visual_start[:, None] + torch.arange(num_visual, device=kept.device)
    keep.scatter_(1, visual, False)
    keep.scatter_(1, visual_start[:, None] + kept, True)
    return keep.nonzero()[:, 1].view(B, -1)  # row-major nonzero: each row's indices ascending
