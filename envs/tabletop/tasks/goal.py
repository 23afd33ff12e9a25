"""`goal` suite (LIBERO-Goal's idea): ONE fixed layout (moved only by a small jitter per init state),
ten different goals on it: put into the bowl, onto the plate, stack, lift, push into a zone, open the
drawer.
"""

from __future__ import annotations

import numpy as np
from vla_accel.envs.tabletop import objects as O
from vla_accel.envs.tabletop.goals import (
    Goal,
    Lift,
    OpenDrawer,
    PlaceIn,
    PlaceOn,
    PushTo,
    Stack,
)
from vla_accel.envs.tabletop.layout import JITTER, Layout, jittered
from vla_accel.envs.tabletop.tasks.base import MAX_STEPS_ONE_STAGE, Task, slug

SUITE = "goal"

OBJECTS = (
    O.bowl("bowl"),
    O.plate("plate"),
    O.cube("red_cube", "red"),
    O.cube("blue_cube", "blue"),
    O.cylinder("green_cylinder", "green"),
)
ZONES = (O.Zone("yellow_zone", "yellow"),)
DRAWERS = (O.Drawer("drawer"),)
NOMINAL = {  # x (towards the camera), y (camera's right)
    "bowl": (-0.12, -0.20),
    "plate": (0.10, 0.22),
    "red_cube": (0.10, -0.10),
    "blue_cube": (0.08, 0.06),
    "green_cylinder": (-0.04, -0.06),
}
ZONE_NOMINAL = (0.18, -0.24)
DRAWER_NOMINAL = (-0.27, 0.13)  # the cabinet at the back right; its drawer opens towards the camera


def sample_layout(rng: np.random.Generator) -> Layout:
    layout = jittered(rng, NOMINAL, JITTER, yaw={"red_cube": True, "blue_cube": True})
    layout.zones["yellow_zone"] = ZONE_NOMINAL
    dx, dy = rng.uniform(-JITTER, JITTER, size=2)
    layout.drawers["drawer"] = (DRAWER_NOMINAL[0] + float(dx), DRAWER_NOMINAL[1] + float(dy))
    return layout


_GOALS: list[tuple[str, Goal]] = [
    ("put the red cube in the bowl", PlaceIn("red_cube", "bowl")),
    ("put the blue cube on the plate", PlaceOn("blue_cube", "plate")),
    ("put the green cylinder in the bowl", PlaceIn("green_cylinder", "bowl")),
    ("put the red cube on the plate", PlaceOn("red_cube", "plate")),
    ("stack the red cube on the blue cube", Stack("red_cube", "blue_cube")),
    ("stack the blue cube on the red cube", Stack("blue_cube", "red_cube")),
    ("pick up the green cylinder and hold it up", Lift("green_cylinder")),
    ("push the red cube to the yellow zone", PushTo("red_cube", "yellow_zone")),
    ("put the green cylinder on the plate", PlaceOn("green_cylinder", "plate")),
    ("open the drawer", OpenDrawer("drawer")),
]


def tasks() -> list[Task]:
    return [
        Task(SUITE, i, slug(text), text, OBJECTS, sample_layout, (goal,), MAX_STEPS_ONE_STAGE, ZONES, DRAWERS)
        for i, (text, goal) in enumerate(_GOALS)
    ]
