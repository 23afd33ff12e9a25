"""`long` suite (LIBERO-10's idea): two-stage tasks; success needs both goals to hold at once.

Each task has one arrangement, drawn once from the task's own seed (destinations first), that its init
states move by +-1.5 cm (LIBERO's small init regions); the one task with the drawer keeps its cabinet
at the back right and the other objects clear of the drawer's path.
"""

from __future__ import annotations

import numpy as np
from vla_accel.envs.tabletop import objects as O
from vla_accel.envs.tabletop.goals import Goal, OpenDrawer, PlaceIn, PlaceOn, Stack
from vla_accel.envs.tabletop.layout import Item, Layout, arrangement_seed, fixed_arrangement, place_items
from vla_accel.envs.tabletop.tasks.base import MAX_STEPS_TWO_STAGES, Task, slug

SUITE = "long"

_ALL = {
    o.name: o
    for o in (
        O.cube("red_cube", "red"),
        O.cube("blue_cube", "blue"),
        O.cylinder("green_cylinder", "green"),
        O.cylinder("yellow_cylinder", "yellow"),
        O.bowl("bowl"),
        O.plate("plate"),
        O.basket("basket"),
    )
}
_PICKABLE = ("red_cube", "blue_cube", "green_cylinder", "yellow_cylinder")

_SPECS: list[tuple[str, tuple[Goal, Goal]]] = [
    ("put the red cube in the bowl and put the blue cube on the plate",
     (PlaceIn("red_cube", "bowl"), PlaceOn("blue_cube", "plate"))),
    ("put the green cylinder on the plate and put the red cube in the bowl",
     (PlaceOn("green_cylinder", "plate"), PlaceIn("red_cube", "bowl"))),
    ("put both the red cube and the blue cube in the basket",
     (PlaceIn("red_cube", "basket"), PlaceIn("blue_cube", "basket"))),
    ("stack the red cube on the blue cube and put the green cylinder in the bowl",
     (Stack("red_cube", "blue_cube"), PlaceIn("green_cylinder", "bowl"))),
    ("put the yellow cylinder in the basket and put the blue cube on the plate",
     (PlaceIn("yellow_cylinder", "basket"), PlaceOn("blue_cube", "plate"))),
    ("put the blue cube in the bowl and put the yellow cylinder on the plate",
     (PlaceIn("blue_cube", "bowl"), PlaceOn("yellow_cylinder", "plate"))),
    ("put both the green cylinder and the yellow cylinder in the basket",
     (PlaceIn("green_cylinder", "basket"), PlaceIn("yellow_cylinder", "basket"))),
    ("put the blue cube on the plate and put the green cylinder in the bowl",
     (PlaceOn("blue_cube", "plate"), PlaceIn("green_cylinder", "bowl"))),
    ("stack the blue cube on the red cube and put the yellow cylinder on the plate",
     (Stack("blue_cube", "red_cube"), PlaceOn("yellow_cylinder", "plate"))),
    ("open the drawer and put the red cube in the bowl",
     (OpenDrawer("drawer"), PlaceIn("red_cube", "bowl"))),
]

# Where the cabinet stands when a task has the drawer (back right, jittered), and the circles
# (centre, radius) that objects keep clear of: the cabinet and the path of the drawer pulled out.
DRAWER_NOMINAL = (-0.27, 0.13)
DRAWER_JITTER = 0.015
_DRAWER_KEEP_OUT = ((np.array([-0.27, 0.13]), 0.15), (np.array([-0.13, 0.13]), 0.14))


def _objects_for(goals: tuple[Goal, Goal]) -> tuple[O.ObjectSpec, ...]:
    """The goals' objects and destinations, plus one distractor so there is always a choice."""
    names: list[str] = []
    for g in goals:
        if isinstance(g, OpenDrawer):
            continue
        for n in (g.obj, getattr(g, "container", None), getattr(g, "support", None), getattr(g, "base", None)):
            if n and n not in names:
                names.append(n)
    names.append(next(n for n in _PICKABLE if n not in names))
    # Destinations first: the big things get placed while there is still room.
    names.sort(key=lambda n: n in _PICKABLE)
    return tuple(_ALL[n] for n in names)


def _scatter(objects: tuple[O.ObjectSpec, ...], with_drawer: bool):
    """Where a task's arrangement comes from."""

    def sample(rng: np.random.Generator) -> Layout:
        items = [Item(o.name, o.footprint_radius, yaw=not isinstance(o, (O.Cylinder, O.Plate))) for o in objects]
        if not with_drawer:
            return place_items(rng, items, gap=0.03)
        layout = place_items(rng, items, gap=0.03, avoid=list(_DRAWER_KEEP_OUT))
        dx, dy = rng.uniform(-DRAWER_JITTER, DRAWER_JITTER, size=2)
        layout.drawers["drawer"] = (DRAWER_NOMINAL[0] + float(dx), DRAWER_NOMINAL[1] + float(dy))
        return layout

    return sample


def tasks() -> list[Task]:
    out = []
    for task_id, (text, goals) in enumerate(_SPECS):
        objects = _objects_for(goals)
        drawers = (O.Drawer("drawer"),) if any(isinstance(g, OpenDrawer) for g in goals) else ()
        init_states = fixed_arrangement(
            _scatter(objects, bool(drawers)),
            arrangement_seed(SUITE, task_id),
            {o.name: o.footprint_radius for o in objects},
            avoid=list(_DRAWER_KEEP_OUT) if drawers else [],
        )
        out.append(
            Task(SUITE, task_id, slug(text), text, objects, init_states, goals, MAX_STEPS_TWO_STAGES, drawers=drawers)
        )
    return out
