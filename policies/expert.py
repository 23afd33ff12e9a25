"""The scripted expert as a policy: `policy=expert` wraps `env.unwrapped.expert()`.

The expert reads the simulator's privileged state, so it acts for the one env it was built from and
ignores the pixels in `obs`; it is the upper bound and the demonstrator, not a learned policy.
"""

from __future__ import annotations

import numpy as np

ACTION_DIM = 7


class ExpertPolicy:
    """LeRobot-style policy API over an env's scripted expert."""

    def __init__(self, expert) -> None:
        self.expert = expert

    def reset(self) -> None:
        self.expert.reset()

    def select_action(self, obs: dict) -> np.ndarray:
        action = np.asarray(self.expert.select_action(obs), dtype=np.float32)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"expert returned an action of shape {action.shape}, expected (7,)")
        return action

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """(B, 1, 7) for B = 1: an expert bound to one simulator can answer for one observation only."""
        images = np.asarray(obs["agentview_image"])
        if images.ndim != 4 or images.shape[0] != 1:
            raise ValueError(
                "the scripted expert acts for its own single env: predict_action_chunk takes a batch "
                f"of 1 observation (agentview_image (1, H, W, 3)), got shape {images.shape}"
            )
        unbatched = {k: v[0] for k, v in obs.items()}  # images, state, and the instruction list
        return self.select_action(unbatched)[None, None, :]


def make_expert_policy(cfg, env) -> ExpertPolicy:
    """Registry builder for `type: expert` (cfg has no further options)."""
    unwrapped = getattr(env, "unwrapped", env)
    if not hasattr(unwrapped, "expert"):
        raise ValueError(f"env {type(unwrapped).__name__} has no scripted expert (env.unwrapped.expert())")
    return ExpertPolicy(unwrapped.expert())
