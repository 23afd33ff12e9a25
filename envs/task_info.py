"""The one record every suite's `list_tasks(suite)` returns (see docs/interfaces.md "Environments").

A NamedTuple (immutable, unpackable as `task_id, name, instruction, max_steps = info`) with the same
fields, in the same order, as the tabletop suite's `vla_accel.envs.tabletop.tasks.base.TaskInfo`, so
records of all suites compare and unpack alike. The tabletop may import this one instead of its own.
"""

from __future__ import annotations

from typing import NamedTuple


class TaskInfo(NamedTuple):
    """One task of a suite: its index, short name, language instruction and episode step limit."""

    task_id: int
    name: str
    instruction: str
    max_steps: int


__all__ = ["TaskInfo"]
