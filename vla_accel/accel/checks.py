"""Input checks of the runner's hot path.

Shape checks cost nothing and always run. Checks of tensor VALUES (index ranges, sortedness, where the
visual span sits) read a result back to the host: free on a CPU, a pipeline stall on a GPU. They run
on CPU tensors, and on any device when ``VLA_ACCEL_DEBUG=1`` is set in the environment, so a CUDA
prefill performs no host sync it does not need.
"""

from __future__ import annotations

import os

from torch import Tensor

DEBUG = os.environ.get("VLA_ACCEL_DEBUG", "") not in ("", "0")


def check_values(t: Tensor) -> bool:
    """Whether to run value checks on ``t`` (CPU tensors always; others only in debug mode)."""
    return DEBUG or t.device.type == "cpu"


def check_selection(kept: Tensor, batch: int, budget: int, num_visual: int, candidates: Tensor | None = None) -> Tensor:
    """A pruning method's (B, M~) kept indices: the right shape, in [0, M), strictly increasing per row,
    and (a later pruning stage) a subset of the ``candidates`` (B, C) the previous stage kept."""
    if kept.shape != (batch, budget):
        raise ValueError(f"pruning method returned shape {tuple(kept.shape)}, expected {(batch, budget)}")
    if check_values(kept):  # in numpy: a few us per check, where a torch op costs ~10 (every step, on a CPU)
        k = kept.detach().cpu().numpy()
        if k.size and (k.min() < 0 or k.max() >= num_visual):
            raise ValueError(f"pruning method returned indices outside [0, {num_visual})")
        if budget > 1 and not (k[:, 1:] > k[:, :-1]).all():
            raise ValueError("pruning method must return strictly increasing (sorted, unique) indices per row")
        if candidates is not None:
            c = candidates.detach().cpu().numpy()
            if not (k[..., None] == c[:, None, :]).any(-1).all():
                raise ValueError("a later pruning stage must keep a subset of the previous stage's tokens")
    return kept.long()


def check_prompt(inputs_embeds, attention_mask, visual_start, num_visual, text_mask) -> None:
    """The prompt's shapes, and (value check) that the M visual tokens fit inside every row."""
    if inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must be (B, T, D), got {tuple(inputs_embeds.shape)}")
    B, T, _ = inputs_embeds.shape
    if attention_mask.shape != (B, T) or text_mask.shape != (B, T):
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} and text_mask {tuple(text_mask.shape)} must be {(B, T)}"
        )
    if visual_start.shape != (B,):
        raise ValueError(f"visual_start must be (B,) = ({B},), got {tuple(visual_start.shape)}")
    if num_visual < 1:
        raise ValueError(f"num_visual must be >= 1, got {num_visual}")
    if check_values(visual_start) and (int(visual_start.min()) < 0 or int(visual_start.max()) + num_visual > T):
        raise ValueError(f"the {num_visual} visual tokens starting at {visual_start.tolist()} do not fit in T={T}")
