"""Which (suite, task) pairs a run covers, from the `env` config group.

`env.suite` is one suite name, a list of them, or "all" (the four tabletop suites); `env.task_ids`
is null (every task) or a list applied to each suite.
"""

from __future__ import annotations

from collections.abc import Sequence

from vla_accel import envs


def resolve_suites(suite) -> list[str]:
    """['spatial'] from 'spatial'; the tabletop suites from 'all'; a list is checked name by name."""
    if isinstance(suite, str):
        names = list(envs.TABLETOP_SUITES) if suite == "all" else [suite]
    elif isinstance(suite, Sequence) and len(suite) > 0:
        names = [str(s) for s in suite]
    else:
        raise ValueError(f"env.suite must be a suite name, a non-empty list of them, or 'all'; got {suite!r}")
    for name in names:
        envs.check_suite(name)
    if len(set(names)) != len(names):
        raise ValueError(f"env.suite lists a suite twice: {names}")
    return names


def resolve_tasks(suite: str, task_ids) -> list:
    """The TaskInfo of each selected task of `suite` (all when task_ids is None), in the given order."""
    tasks = list(envs.list_tasks(suite))
    if task_ids is None:
        return tasks
    by_id = {t.task_id: t for t in tasks}
    chosen = []
    for task_id in task_ids:
        if task_id not in by_id:
            raise ValueError(
                f"unknown task_id {task_id!r} for suite {suite!r}; valid ids: {sorted(by_id)}"
            )
        chosen.append(by_id[task_id])
    return chosen


def env_kwargs(env_cfg) -> dict:
    """Keyword arguments for make_env from the env group: image_size, control_hz and env.kwargs."""
    kwargs = {"image_size": int(env_cfg.image_size), "control_hz": float(env_cfg.control_hz)}
    extra = env_cfg.get("kwargs") or {}
    kwargs.update(dict(extra))
    return kwargs
