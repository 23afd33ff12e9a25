"""`spatial` suite (LIBERO-Spatial's idea): two identical red cubes, a plate, a bowl and a yellow
cylinder in every task; the instruction names a spatial relation that decides WHICH cube to move.

Directions are the `agentview` camera's: left/right = -y/+y, front = +x (near the camera), back = -x.
The target cube is always the body `cube_a` and the other `cube_b`; they look the same, so only the
relation in the instruction tells them apart. Layouts are redrawn until the relation holds with a
clear margin (8 cm), so the instruction is never ambiguous. As in LIBERO-Spatial, each task has one
arrangement (drawn once from the task's own seed) that its init states move by +-1.5 cm, the relation
still holding with its margin in every one of them.
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
    arrangement_seed,
    distance,
    fixed_arrangement,
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
            pos = _positions(layout)
            if relation(pos) < 0:
                layout.objects["cube_a"], layout.objects["cube_b"] = layout.objects["cube_b"], layout.objects["cube_a"]
                pos["cube_a"], pos["cube_b"] = pos["cube_b"], pos["cube_a"]
            if relation(pos) > MARGIN:
                return layout
        raise RuntimeError("no layout satisfied the spatial relation")

    return sample


def _between_layout(rng: np.random.Generator) -> Layout:
    """Bowl and plate far apart, cube_a near their midpoint (cube_b is then drawn anywhere)."""

    def mid(placed):
        return around((placed["bowl"] + placed["plate"]) / 2, 0.02)

    items = [_item("bowl"), _item("plate"), _item("cube_a", mid), _item("cylinder"), _item("cube_b")]
    return place_items(rng, items, gap=0.03)


def _between(p: dict[str, np.ndarray]) -> bool:
    """cube_a on the bowl-plate segment, cube_b well off it, bowl and plate far apart."""
    seg = lambda n: _segment_distance(p[n], p["bowl"], p["plate"])
    return distance(p["bowl"], p["plate"]) > 0.26 and seg("cube_a") < 0.05 and seg("cube_b") > 0.1


def _center_layout(rng: np.random.Generator) -> Layout:
    """cube_a near the table centre (cube_b is then drawn anywhere)."""
    items = [_item("cube_a", around(np.zeros(2), 0.03)), _item("bowl"), _item("plate"), _item("cylinder"), _item("cube_b")]
    return place_items(rng, items)


def _in_center(p: dict[str, np.ndarray]) -> bool:
    """cube_a within 6 cm of the table centre, cube_b at least 15 cm from it."""
    return distance(p["cube_a"], np.zeros(2)) < 0.06 and distance(p["cube_b"], np.zeros(2)) > 0.15


def _positions(layout: Layout) -> dict[str, np.ndarray]:
    return {n: layout.xy(n) for n in layout.objects}


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
    return distance(p, a + t * (b - a))


def _nearer(landmark: str) -> Relation:
    return lambda p: distance(p["cube_b"], p[landmark]) - distance(p["cube_a"], p[landmark])


def _farther(landmark: str) -> Relation:
    return lambda p: distance(p["cube_a"], p[landmark]) - distance(p["cube_b"], p[landmark])


def _relational(relation: Relation) -> tuple[Callable[[np.random.Generator], Layout], Callable[[dict], bool]]:
    return _relational_layout(relation), lambda p: relation(p) > MARGIN


# (which red cube, destination, (where its arrangement is drawn from, what must hold in every init state))
_SPECS = [
    ("the red cube on the left", "plate", _relational(lambda p: p["cube_b"][1] - p["cube_a"][1])),
    ("the red cube on the right", "bowl", _relational(lambda p: p["cube_a"][1] - p["cube_b"][1])),
    ("the front red cube", "plate", _relational(lambda p: p["cube_a"][0] - p["cube_b"][0])),
    ("the back red cube", "bowl", _relational(lambda p: p["cube_b"][0] - p["cube_a"][0])),
    ("the red cube next to the plate", "bowl", _relational(_nearer("plate"))),
    ("the red cube next to the bowl", "plate", _relational(_nearer("bowl"))),
    ("the red cube next to the yellow cylinder", "plate", _relational(_nearer("cylinder"))),
    ("the red cube between the bowl and the plate", "bowl", (_between_layout, _between)),
    ("the red cube farthest from the bowl", "bowl", _relational(_farther("bowl"))),
    ("the red cube in the middle of the table", "plate", (_center_layout, _in_center)),
]


def tasks() -> list[Task]:
    out = []
    for task_id, (which, dest, (sample, holds)) in enumerate(_SPECS):
        where = "on the plate" if dest == "plate" else "in the bowl"
        instruction = f"pick up {which} and place it {where}"
        goal = PlaceOn("cube_a", "plate") if dest == "plate" else PlaceIn("cube_a", "bowl")
        init_states = fixed_arrangement(
            sample, arrangement_seed(SUITE, task_id), _R, holds=lambda layout, h=holds: h(_positions(layout))
        )
        out.append(
            Task(SUITE, task_id, slug(instruction), instruction, OBJECTS, init_states, (goal,), MAX_STEPS_ONE_STAGE)
        )
    return out
