"""Diffusion schedule for the action head: DDPM training (epsilon prediction) over T steps with the
cosine ("squaredcos_cap_v2") schedule, DDIM (eta = 0) sampling over a uniform subset of steps.

`clip_sample=True` (ours) clamps the predicted x0 to [-1, 1] at every step. `clip_sample=False` is the
released CogACT's sampler (improved-diffusion's `ddim_sample` with `clip_denoised=False`), and then the
step also follows that code's arithmetic to the rounding: sqrt(1/abar) and sqrt(1/abar - 1) taken in
float64 and rounded to float32, x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps, eps recomputed from x0, and
sqrt(abar_prev), sqrt(1 - abar_prev) taken in float32 from the rounded abar_prev
(/work/shared/cogact_release.md, section 2.9)."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("squaredcos_cap_v2", "linear")


def make_betas(num_train_steps: int, schedule: str) -> torch.Tensor:
    if schedule == "linear":
        return torch.linspace(1e-4, 2e-2, num_train_steps, dtype=torch.float64)
    if schedule == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = [min(1 - alpha_bar((i + 1) / num_train_steps) / alpha_bar(i / num_train_steps), 0.999)
                 for i in range(num_train_steps)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {schedule!r}; valid: {SCHEDULES}")


class DDIM:
    def __init__(self, num_train_steps: int = 100, schedule: str = "squaredcos_cap_v2",
                 clip_sample: bool = True) -> None:
        self.num_train_steps = num_train_steps
        self.alphas_cumprod = torch.cumprod(1.0 - make_betas(num_train_steps, schedule), dim=0)
        self.clip_sample = clip_sample

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps t (B,), 1.0 for t < 0; shaped to broadcast with `like`."""
        table = self.alphas_cumprod.to(like.device)
        abar = torch.where(t >= 0, table[t.clamp(min=0)], torch.ones_like(table[:1]))
        return abar.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def timesteps(self, num_steps: int) -> list[int]:
        """Uniformly spaced, descending: 100 train steps, 10 DDIM steps -> [90, 80, ..., 0]."""
        if not 1 <= num_steps <= self.num_train_steps:
            raise ValueError(f"num_steps must be in [1, {self.num_train_steps}], got {num_steps}")
        stride = self.num_train_steps // num_steps
        return list(range(0, stride * num_steps, stride))[::-1]

    def step(self, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM update x_t -> x_{t_prev} from the predicted noise."""
        if not self.clip_sample:
            return self._unclipped_step(eps, t, t_prev, x)
        b = x.shape[0]
        abar_t = self._abar(torch.full((b,), t, device=x.device), x)
        abar_prev = self._abar(torch.full((b,), t_prev, device=x.device), x)
        x0 = (x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
        return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps

    def _unclipped_step(self, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor) -> torch.Tensor:
        """CogACT's DDIM step (eta = 0, no clipping), with its float64 -> float32 coefficient roundings."""
        abar = self.alphas_cumprod[t]  # float64, as improved-diffusion precomputes its tables
        recip = torch.sqrt(1.0 / abar).to(torch.float32)
        recipm1 = torch.sqrt(1.0 / abar - 1.0).to(torch.float32)
        abar_prev = (self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones((), dtype=torch.float64))
        abar_prev = abar_prev.to(torch.float32)
        x0 = recip * x - recipm1 * eps
        eps = (recip * x - x0) / recipm1
        return x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev) * eps
