"""An exponential moving average of a policy's trained weights (`train.ema_decay`), as diffusion policies
train with (Diffusion Policy, Chi et al. 2023): the raw weights of a run that is
still learning move from batch to batch (a rollout of cogact_deep succeeded on different tasks at steps
9000, 10000 and 10500 of one run), and their average moves less. Whether it buys success was not measured
against a run without it (the one run that used it, checkpoints/in_training/cogact_deep_goal_ft, changed
the data as well).

The average is what a checkpoint's `model.safetensors` holds (what evaluation loads); the raw weights
travel in the trainer state, so a resumed run goes on training them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

RAW_PREFIX = "raw."  # the raw weights' keys in the trainer state


class WeightAverage:
    """shadow <- d * shadow + (1 - d) * weight after every optimizer step, over the trainable parameters,
    with d = min(decay, (1 + n) / (10 + n)) at the n-th update: the warm-up keeps the first averages from
    holding on to the random init (n counts updates of this average, so one started from a trained
    checkpoint warms up too)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) (0 = off), got {decay}")
        self.decay, self.updates = decay, 0  # a resume sets `updates` from the trainer state
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach(), 1.0 - d)
        self.updates += 1

    @contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its raw weights again after it; the block
        gets the raw weights as trainer-state tensors (keys `raw.<name>`, on the CPU)."""
        raw = {n: p.detach().clone() for n, p in self.params.items()}
        try:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(self.shadow[n])
            yield {RAW_PREFIX + n: v.cpu().contiguous() for n, v in raw.items()}
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(raw[n])

    @torch.no_grad()
    def restore_raw(self, tensors: dict[str, torch.Tensor]) -> bool:
        """After a resume: the model was loaded from the checkpoint (the average); put the raw weights the
        trainer state holds back into it. False when the state has none (a run that had no average):
        then training goes on from the loaded weights and the average starts from them."""
        raw = {k[len(RAW_PREFIX):]: v for k, v in tensors.items() if k.startswith(RAW_PREFIX)}
        if not raw:
            return False
        if raw.keys() != self.params.keys():
            missing = sorted(self.params.keys() - raw.keys())[:3]
            raise ValueError(f"the trainer state's raw weights do not match the model (missing {missing}); "
                             "was train.freeze_vlm changed between the runs?")
        for n, p in self.params.items():
            p.copy_(raw[n])
        return True
