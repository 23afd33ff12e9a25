"""What a tabletop task is: its objects, how its init states are laid out, its goals and its limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from vla_accel.envs.tabletop.goals import Goal
from vla_accel.envs.tabletop.layout import Layout
from vla_accel.envs.tabletop.objects import Drawer, ObjectSpec, Zone


class TaskInfo(NamedTuple):
    """The public summary `list_tasks` gives (docs/interfaces.md)."""

    task_id: int
    name: str
    instruction: str
    max_steps: int


@dataclass(frozen=True)
class Task:
    suite: str
    task_id: int
    name: str
    instruction: str
    objects: tuple[ObjectSpec, ...]
    sample_layout: Callable[[np.random.Generator], Layout]  # one init state from a seeded generator
    goals: tuple[Goal, ...]  # all must hold at once for success; the expert does them in order
    max_steps: int
    zones: tuple[Zone, ...] = ()
    drawers: tuple[Drawer, ...] = ()

    @property
    def info(self) -> TaskInfo:
        return TaskInfo(self.task_id, self.name, self.instruction, self.max_steps)


def slug(text: str) -> str:
    """Task name from its instruction, LIBERO style: 'put the red cube in the bowl' -> 'put_the_red_cube_in_the_bowl'."""
    return "_".join(text.lower().replace(",", "").split())


# Step budgets (at 20 Hz), from scripts/check_experts.py over all 50 init states: the expert's median
# episode is 50-68 steps for one stage (lift: 28) and 118-137 for two; with action noise of std 0.1 its
# longest successful episodes were 126 and 331 steps (recoveries after a drop). The budgets are about
# 2.5x the typical length, so that recovering policies are not cut short.
MAX_STEPS_ONE_STAGE = 160
MAX_STEPS_TWO_STAGES = 320
