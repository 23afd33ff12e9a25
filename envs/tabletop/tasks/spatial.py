"""`spatial` suite (LIBERO-Spatial's idea): two identical red cubes, a plate, a bowl and a yellow
cylinder in every task; the instruction names a spatial relation that decides WHICH cube to move.

Directions are the `agentview` camera's: left/right = -y/+y, front = +x (near the camera), back = -x.
The target cube is always the body `cube_a` and the other `cube_b`; they look the same, so only the
relation in the instruction tells them apart. Layouts are redrawn until the relation holds with a
clear margin (8 cm), so the instruction is never ambiguous.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from vla_accel.envs.tabletop import objects as O
from vla_accel.envs.tabletop.goals import PlaceIn, PlaceOn
from vla_accel.envs.tabletop.layout import (
    TABLE_REGION,
    Item,
    Layout,
    around,
    distance,
    place_items,
)
from vla_accel.envs.tabletop.tasks.base import MAX_STEPS_ONE_STAGE, Task, slug

SUITE = "spatial"
MARGIN = 0.08  # metres by which the target must win the relation

OBJECTS = (
    O.cube("cube_a", "red"),
    O.cube("cube_b", "red"),
    O.plate("plate"),
    O.bowl("bowl"),
    O.cylinder("cylinder", "yellow"),
)
_R = {o.name: o.footprint_radius for o in OBJECTS}

Relation = Callable[[dict[str, np.ndarray]], float]  # positions -> how much cube_a wins (> MARGIN: holds)


def _item(name: str, region=TABLE_REGION) -> Item:
    return Item(name, _R[name], region, yaw=name.startswith("cube"))


def _relational_layout(relation: Relation) -> Callable[[np.random.Generator], Layout]:
    """Place everything at random; swap the two cubes if cube_b wins; redraw until the margin holds."""

    def sample(rng: np.random.Generator) -> Layout:
        for _ in range(500):
            layout = place_items(rng, [_item(n) for n in ("bowl", "plate", "cylinder", "cube_a", "cube_b")])
            pos = {n: layout.xy(n) for n in layout.objects}
            if relation(pos) < 0:
                layout.objects["cube_a"], layout.objects["cube_b"] = layout.objects["cube_b"], layout.objects["cube_a"]
                pos["cube_a"], pos["cube_b"] = pos["cube_b"], pos["cube_a"]
            if relation(pos) > MARGIN:
                return layout
        raise RuntimeError("no layout satisfied the spatial relation")

    return sample


def _between_layout(rng: np.random.Generator) -> Layout:
    """Bowl and plate far apart, cube_a near their midpoint, cube_b well off the segment between them."""

    def mid(placed):
        return around((placed["bowl"] + placed["plate"]) / 2, 0.02)

    for _ in range(500):
        layout = place_items(
            rng,
            [_item("bowl"), _item("plate"), _item("cube_a", mid), _item("cylinder"), _item("cube_b")],
            gap=0.03,
        )
        pos = {n: layout.xy(n) for n in layout.objects}
        if distance(pos["bowl"], pos["plate"]) > 0.26 and _segment_distance(pos["cube_b"], pos["bowl"], pos["plate"]) > 0.1:
            return layout
    raise RuntimeError("no 'between' layout found")


def _center_layout(rng: np.random.Generator) -> Layout:
    """cube_a near the table centre, cube_b at least 15 cm from it."""
    center = np.zeros(2)
    for _ in range(500):
        layout = place_items(
            rng, [_item("cube_a", around(center, 0.03)), _item("bowl"), _item("plate"), _item("cylinder"), _item("cube_b")]
        )
        if distance(layout.xy("cube_b"), center) > 0.15:
            return layout
    raise RuntimeError("no 'center' layout found")


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
    return distance(p, a + t * (b - a))


def _nearer(landmark: str) -> Relation:
    return lambda p: distance(p["cube_b"], p[landmark]) - distance(p["cube_a"], p[landmark])


def _farther(landmark: str) -> Relation:
    return lambda p: distance(p["cube_a"], p[landmark]) - distance(p["cube_b"], p[landmark])


# (which red cube, destination, layout sampler)
_SPECS = [
    ("the red cube on the left", "plate", _relational_layout(lambda p: p["cube_b"][1] - p["cube_a"][1])),
    ("the red cube on the right", "bowl", _relational_layout(lambda p: p["cube_a"][1] - p["cube_b"][1])),
    ("the front red cube", "plate", _relational_layout(lambda p: p["cube_a"][0] - p["cube_b"][0])),
    ("the back red cube", "bowl", _relational_layout(lambda p: p["cube_b"][0] - p["cube_a"][0])),
    ("the red cube next to the plate", "bowl", _relational_layout(_nearer("plate"))),
    ("the red cube next to the bowl", "plate", _relational_layout(_nearer("bowl"))),
    ("the red cube next to the yellow cylinder", "plate", _relational_layout(_nearer("cylinder"))),
    ("the red cube between the bowl and the plate", "bowl", _between_layout),
    ("the red cube farthest from the bowl", "bowl", _relational_layout(_farther("bowl"))),
    ("the red cube in the middle of the table", "plate", _center_layout),
]


def tasks() -> list[Task]:
    out = []
    for task_id, (which, dest, sampler) in enumerate(_SPECS):
        where = "on the plate" if dest == "plate" else "in the bowl"
        instruction = f"pick up {which} and place it {where}"
        goal = PlaceOn("cube_a", "plate") if dest == "plate" else PlaceIn("cube_a", "bowl")
        out.append(
            Task(SUITE, task_id, slug(instruction), instruction, OBJECTS, sampler, (goal,), MAX_STEPS_ONE_STAGE)
        )
    return out
