"""`object` suite (LIBERO-Object's idea): pick the named object among distractors and put it in the
basket. Ten distinct objects (colour and shape); task i targets object i, with four fixed distractors
per task. Each task has one arrangement of its basket and objects, drawn once from the task's own seed,
that its init states move by +-1.5 cm (LIBERO's small init regions).
"""

from __future__ import annotations

import numpy as np
from vla_accel.envs.tabletop import objects as O
from vla_accel.envs.tabletop.goals import PlaceIn
from vla_accel.envs.tabletop.layout import Item, Layout, arrangement_seed, fixed_arrangement, place_items
from vla_accel.envs.tabletop.tasks.base import MAX_STEPS_ONE_STAGE, Task, slug

SUITE = "object"

# The pool, in task order. Body names are neutral (obj0..obj9) so they carry no hint.
POOL = (
    O.cube("obj0", "red"),
    O.cylinder("obj1", "yellow"),
    O.cube("obj2", "green"),
    O.block("obj3", "purple"),
    O.cylinder("obj4", "blue"),
    O.cube("obj5", "orange"),
    O.block("obj6", "cyan"),
    O.cylinder("obj7", "pink"),
    O.cube("obj8", "white"),
    O.block("obj9", "brown"),
)
DISTRACTOR_OFFSETS = (1, 3, 6, 8)  # task i's distractors: POOL[(i + k) % 10]


def _scatter(objects: tuple[O.ObjectSpec, ...]):
    """Basket away from the table's edges, the rest anywhere: where a task's arrangement comes from."""

    def sample(rng: np.random.Generator) -> Layout:
        basket, *rest = objects
        items = [Item(basket.name, basket.footprint_radius, (-0.17, 0.17, -0.22, 0.22), yaw=True)]
        items += [Item(o.name, o.footprint_radius, yaw=not isinstance(o, O.Cylinder)) for o in rest]
        return place_items(rng, items, gap=0.03)

    return sample


def tasks() -> list[Task]:
    out = []
    for task_id, target in enumerate(POOL):
        distractors = [POOL[(task_id + k) % len(POOL)] for k in DISTRACTOR_OFFSETS]
        objects = (O.basket(), target, *distractors)
        instruction = f"pick up the {target.label} and place it in the basket"
        out.append(
            Task(
                SUITE,
                task_id,
                slug(instruction),
                instruction,
                objects,
                fixed_arrangement(
                    _scatter(objects), arrangement_seed(SUITE, task_id), {o.name: o.footprint_radius for o in objects}
                ),
                (PlaceIn(target.name, "basket"),),
                MAX_STEPS_ONE_STAGE,
            )
        )
    return out
