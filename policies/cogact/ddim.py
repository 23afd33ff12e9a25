"""Diffusion schedule for the action head: DDPM training (epsilon prediction) over T steps with the
cosine ("squaredcos_cap_v2") schedule, DDIM (eta = 0) sampling over a uniform subset of steps."""

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
        b = x.shape[0]
        abar_t = self._abar(torch.full((b,), t, device=x.device), x)
        abar_prev = self._abar(torch.full((b,), t_prev, device=x.device), x)
        x0 = (x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
        if self.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
        return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
