"""LIBERO-like MuJoCo tabletop benchmark: four suites (spatial, object, goal, long) of ten tasks each.

`make_tabletop_env(suite, task_id, image_size=128, control_hz=20.0)` builds one task's env (a plain
`TabletopEnv`, no wrappers); `list_tasks(suite)` lists a suite's `TaskInfo`s. Importing this package
also registers the gymnasium id `vla_accel/Tabletop-v0` (kwargs: suite, task_id, image_size, ...).
See `env.py` for the action and observation conventions.
"""

from __future__ import annotations

import gymnasium as gym
from vla_accel.envs.tabletop.env import TabletopEnv
from vla_accel.envs.tabletop.tasks import (
    SUITES,
    TaskInfo,
    check_tabletop_suite,
    get_task,
    suite_tasks,
)

GYM_ID = "vla_accel/Tabletop-v0"


def make_tabletop_env(suite: str, task_id: int, **kwargs) -> TabletopEnv:
    """One task's env; keyword arguments: image_size, control_hz, render_mode, render_images."""
    return TabletopEnv(suite=suite, task_id=task_id, **kwargs)


def list_tasks(suite: str) -> list[TaskInfo]:
    return [t.info for t in suite_tasks(check_tabletop_suite(suite))]


if GYM_ID not in gym.registry:
    gym.register(id=GYM_ID, entry_point="vla_accel.envs.tabletop.env:TabletopEnv")

__all__ = ["GYM_ID", "SUITES", "TabletopEnv", "TaskInfo", "get_task", "list_tasks", "make_tabletop_env"]
