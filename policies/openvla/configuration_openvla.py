"""Configuration of the OpenVLA-style policy (a `VLMConfig` plus the action-token decoding)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_accel.policies.common.vlm_config import VLMConfig

MODEL_TYPE = "vla_accel_openvla"


# How the model's last action dimension encodes the gripper:
#   "signed":    what the envs take (robosuite / LIBERO and our tabletop): -1 open, +1 close
#   "open_is_1": OpenVLA's released checkpoints: [0, 1] with 1 = open. The env-facing calls map it as
#                OpenVLA's run_libero_eval does: g -> -sign(2 g - 1) (binarised, then inverted).
GRIPPER_CONVENTIONS = ("signed", "open_is_1")


@dataclass
class OpenVLAConfig(VLMConfig):
    n_action_bins: int = 256
    gripper: str = "signed"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.n_action_bins <= 4096:
            raise ValueError(f"n_action_bins must be in [2, 4096], got {self.n_action_bins}")
        if self.gripper not in GRIPPER_CONVENTIONS:
            raise ValueError(f"gripper must be one of {list(GRIPPER_CONVENTIONS)}, got {self.gripper!r}")


def env_gripper(actions, convention: str):
    """(..., A) actions with the last dimension in the envs' gripper convention (-1 open, +1 close)."""
    if convention == "signed":
        return actions
    out = actions.copy()
    out[..., -1] = -np.sign(2.0 * out[..., -1] - 1.0)  # OpenVLA: normalize_gripper_action, then invert
    return out
