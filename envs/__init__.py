"""Simulated manipulation suites behind one gymnasium interface (see docs/interfaces.md).

`make_env(suite, task_id)` builds any of them: the LIBERO-like MuJoCo tabletop suites of this project
(`spatial`, `object`, `goal`, `long`), and adapters to Meta-World (`metaworld`) and LIBERO
(`libero_spatial`, `libero_object`, `libero_goal`, `libero_10`), the last two being optional extras.
"""

from __future__ import annotations

import gymnasium as gym

from vla_accel.registry import unknown_name

TABLETOP_SUITES = ("spatial", "object", "goal", "long")
LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
ALL_SUITES = TABLETOP_SUITES + ("metaworld",) + LIBERO_SUITES


def check_suite(suite: str) -> str:
    """Return `suite` if it is known, else raise a ValueError that lists the valid names."""
    if suite not in ALL_SUITES:
        raise unknown_name(suite, ALL_SUITES, "suite", label="Valid suites")
    return suite


def list_tasks(suite: str):
    """The tasks of a suite as a list of `TaskInfo(task_id, name, instruction, max_steps)`."""
    check_suite(suite)
    if suite in TABLETOP_SUITES:
        from vla_accel.envs.tabletop import list_tasks as _list
    elif suite == "metaworld":
        from vla_accel.envs.metaworld_adapter import list_tasks as _list
    else:
        from vla_accel.envs.libero_adapter import list_tasks as _list
    return _list(suite)


def make_env(suite: str, task_id: int, **kwargs) -> gym.Env:
    """Build the environment for one task of one suite (keyword arguments go to the suite's env)."""
    check_suite(suite)
    if suite in TABLETOP_SUITES:
        from vla_accel.envs.tabletop import make_tabletop_env as _make
    elif suite == "metaworld":
        from vla_accel.envs.metaworld_adapter import make_metaworld_env as _make
    else:
        from vla_accel.envs.libero_adapter import make_libero_env as _make
    return _make(suite, task_id, **kwargs)


__all__ = ["ALL_SUITES", "LIBERO_SUITES", "TABLETOP_SUITES", "check_suite", "list_tasks", "make_env"]
