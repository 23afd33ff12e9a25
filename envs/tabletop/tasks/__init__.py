"""The four tabletop suites, ten tasks each."""

from __future__ import annotations

import numbers
from functools import cache

from vla_accel.envs.tabletop.tasks import goal, long, object_suite, spatial
from vla_accel.envs.tabletop.tasks.base import Task, TaskInfo

SUITES = ("spatial", "object", "goal", "long")
_MODULES = {"spatial": spatial, "object": object_suite, "goal": goal, "long": long}


def check_tabletop_suite(suite: str) -> str:
    if suite not in _MODULES:
        raise ValueError(f"unknown tabletop suite {suite!r}; valid suites: {', '.join(SUITES)}")
    return suite


@cache
def suite_tasks(suite: str) -> tuple[Task, ...]:
    return tuple(_MODULES[check_tabletop_suite(suite)].tasks())


def get_task(suite: str, task_id: int) -> Task:
    tasks = suite_tasks(suite)
    if isinstance(task_id, bool) or not isinstance(task_id, numbers.Integral) or not 0 <= task_id < len(tasks):
        raise ValueError(
            f"task_id {task_id!r} out of range for suite {suite!r}: valid task ids are 0..{len(tasks) - 1}"
        )
    return tasks[int(task_id)]


__all__ = ["SUITES", "Task", "TaskInfo", "check_tabletop_suite", "get_task", "suite_tasks"]
