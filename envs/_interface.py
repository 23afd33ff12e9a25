"""The observation/action contract of docs/interfaces.md "Environments", shared by the adapters.

Observation: Dict(agentview_image (H, W, 3) uint8, wrist_image (H, W, 3) uint8, state (8,) float32,
instruction Text). Action: Box(-1, 1, (7,), float32) = [dx, dy, dz, droll, dpitch, dyaw, gripper],
gripper -1 = open, +1 = close.
"""

from __future__ import annotations

import string

import numpy as np
from gymnasium import spaces

ACTION_DIM = 7
STATE_DIM = 8
# Instructions are plain English sentences: letters, digits, punctuation and the space.
INSTRUCTION_CHARSET = frozenset(string.ascii_letters + string.digits + string.punctuation + " ")
INSTRUCTION_MAX_LENGTH = 256


def make_action_space() -> spaces.Box:
    return spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)


def make_observation_space(image_size: int) -> spaces.Dict:
    image_size = check_image_size(image_size)
    image = spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8)
    return spaces.Dict(
        {
            "agentview_image": image,
            "wrist_image": image,
            "state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), dtype=np.float32),
            "instruction": spaces.Text(INSTRUCTION_MAX_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET),
        }
    )


def check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16 (square frames), got {image_size!r}")
    return int(image_size)


def validate_action(action) -> np.ndarray:
    """(7,) array-like -> float32 (7,) clipped to [-1, 1]; a wrong shape or NaN/inf raises ValueError."""
    a = np.asarray(action, dtype=np.float32)
    if a.shape != (ACTION_DIM,):
        raise ValueError(
            f"action must have shape ({ACTION_DIM},) = [dx, dy, dz, droll, dpitch, dyaw, gripper], got {a.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action must be finite: it holds NaN or inf: {a.tolist()}")
    return np.clip(a, -1.0, 1.0)


def check_instruction(instruction: str) -> str:
    """Instructions must fit the Text space (so gymnasium's checker accepts every observation)."""
    bad = set(instruction) - INSTRUCTION_CHARSET
    if not instruction or len(instruction) > INSTRUCTION_MAX_LENGTH or bad:
        raise ValueError(
            f"instruction {instruction!r} must be 1..{INSTRUCTION_MAX_LENGTH} printable ASCII characters"
            + (f" (bad: {sorted(bad)})" if bad else "")
        )
    return instruction


def check_task_id(task_id, n_tasks: int, suite: str) -> int:
    if isinstance(task_id, bool) or not isinstance(task_id, (int, np.integer)) or not 0 <= task_id < n_tasks:
        raise ValueError(f"task_id for suite {suite!r} must be an integer in 0..{n_tasks - 1}, got {task_id!r}")
    return int(task_id)


def check_init_state_id(init_state_id, n_states: int) -> int:
    if (
        isinstance(init_state_id, bool)
        or not isinstance(init_state_id, (int, np.integer))
        or not 0 <= init_state_id < n_states
    ):
        raise ValueError(f"init_state_id must be an integer in 0..{n_states - 1}, got {init_state_id!r}")
    return int(init_state_id)


__all__ = [
    "ACTION_DIM",
    "STATE_DIM",
    "check_image_size",
    "check_init_state_id",
    "check_instruction",
    "check_task_id",
    "make_action_space",
    "make_observation_space",
    "validate_action",
]
