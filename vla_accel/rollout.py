"""One episode of a policy in an env: the control loop every evaluation runs.

Kept to the bare loop (reset, then select_action -> step until the env ends the episode) so that
per-stage timing or a real-time mode can wrap it later without changing what an episode means.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field

import numpy as np

from vla_accel.video import side_by_side


@dataclass
class EpisodeRecord:
    """What one episode produced. `success` is True if info["is_success"] held at any step."""

    success: bool
    sum_reward: float
    max_reward: float
    n_steps: int
    first_success_step: int | None = None  # 1-based step at which success was first reported
    frames: list[np.ndarray] | None = None  # (H, 2W, 3) uint8 each, when recording video
    extra: dict = field(default_factory=dict)  # room for later per-episode measurements


def seed_everything(seed: int) -> None:
    """Seed the global RNGs a stochastic policy may draw from (python, numpy, torch if loaded)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def run_episode(
    env,
    policy,
    *,
    init_state_id: int,
    seed: int,
    max_steps: int | None = None,
    record_video: bool = False,
) -> EpisodeRecord:
    """Roll `policy` out from init state `init_state_id` until terminated, truncated or `max_steps`.

    `max_steps` is a safety cap on top of the env's own truncation (None = trust the env).
    """
    seed_everything(seed)
    policy.reset()
    obs, info = env.reset(seed=seed, options={"init_state_id": int(init_state_id)})
    frames = [side_by_side(obs)] if record_video else None
    sum_reward, max_reward = 0.0, -np.inf
    first_success_step = None
    n_steps = 0
    while max_steps is None or n_steps < max_steps:
        action = policy.select_action(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        n_steps += 1
        sum_reward += float(reward)
        max_reward = max(max_reward, float(reward))
        if first_success_step is None and bool(info["is_success"]):
            first_success_step = n_steps
        if frames is not None:
            frames.append(side_by_side(obs))
        if terminated or truncated:
            break
    return EpisodeRecord(
        success=first_success_step is not None,
        sum_reward=sum_reward,
        max_reward=float(max_reward) if n_steps else 0.0,
        n_steps=n_steps,
        first_success_step=first_success_step,
        frames=frames,
    )
