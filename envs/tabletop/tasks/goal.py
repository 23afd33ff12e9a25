"""`goal` suite (LIBERO-Goal's idea): ONE fixed layout (moved only by a small jitter per init state),
ten different goals on it: put into the bowl, onto the plate, stack, lift, push into a zone.
"""

from __future__ import annotations

import numpy as np

from vla_accel.envs.tabletop import objects as O
from vla_accel.envs.tabletop.goals import Goal, Lift, PlaceIn, PlaceOn, PushTo, Stack
from vla_accel.envs.tabletop.layout import Layout, jittered
from vla_accel.envs.tabletop.tasks.base import MAX_STEPS_ONE_STAGE, Task, slug

SUITE = "goal"
JITTER = 0.015  # metres, per object and axis

OBJECTS = (
    O.bowl("bowl"),
    O.plate("plate"),
    O.cube("red_cube", "red"),
    O.cube("blue_cube", "blue"),
    O.cylinder("green_cylinder", "green"),
)
ZONES = (O.Zone("yellow_zone", "yellow"),)
NOMINAL = {  # x (towards the camera), y (camera's right)
    "bowl": (-0.10, -0.20),
    "plate": (-0.10, 0.20),
    "red_cube": (0.08, -0.06),
    "blue_cube": (0.08, 0.08),
    "green_cylinder": (-0.06, 0.02),
}
ZONE_NOMINAL = (0.17, 0.24)


def sample_layout(rng: np.random.Generator) -> Layout:
    layout = jittered(rng, NOMINAL, JITTER, yaw={"red_cube": True, "blue_cube": True})
    layout.zones["yellow_zone"] = ZONE_NOMINAL
    return layout


_GOALS: list[tuple[str, Goal]] = [
    ("put the red cube in the bowl", PlaceIn("red_cube", "bowl")),
    ("put the blue cube on the plate", PlaceOn("blue_cube", "plate")),
    ("put the green cylinder in the bowl", PlaceIn("green_cylinder", "bowl")),
    ("put the red cube on the plate", PlaceOn("red_cube", "plate")),
    ("stack the red cube on the blue cube", Stack("red_cube", "blue_cube")),
    ("stack the blue cube on the red cube", Stack("blue_cube", "red_cube")),
    ("pick up the green cylinder and hold it up", Lift("green_cylinder")),
    ("push the blue cube to the yellow zone", PushTo("blue_cube", "yellow_zone")),
    ("put the green cylinder on the plate", PlaceOn("green_cylinder", "plate")),
    ("put the blue cube in the bowl", PlaceIn("blue_cube", "bowl")),
]


def tasks() -> list[Task]:
    return [
        Task(SUITE, i, slug(text), text, OBJECTS, sample_layout, (goal,), MAX_STEPS_ONE_STAGE, ZONES)
        for i, (text, goal) in enumerate(_GOALS)
    ]
