"""Init states as LIBERO has them: one arrangement per task, moved by a few cm, conditions kept."""

from __future__ import annotations

import numpy as np
import pytest
from vla_accel.envs.tabletop.layout import (
    JITTER,
    MIN_GAP,
    NUM_INIT_STATES,
    Item,
    arrangement_seed,
    clearance,
    fixed_arrangement,
    init_state_seed,
    place_items,
)
from vla_accel.envs.tabletop.tasks import SUITES, spatial, suite_tasks


def init_states(task, split="eval", n=NUM_INIT_STATES):
    return [task.sample_layout(np.random.default_rng(init_state_seed(task.suite, task.task_id, i, split))) for i in range(n)]


def positions(layouts):
    return np.stack([[layout.xy(name) for name in sorted(layout.objects)] for layout in layouts])  # (n, objects, 2)


@pytest.mark.parametrize("suite", SUITES)
def test_init_states_are_one_arrangement_moved_by_the_jitter(suite):
    for task in suite_tasks(suite):
        spread = np.ptp(positions(init_states(task) + init_states(task, "train", 20)), axis=0)
        assert spread.max() <= 2 * JITTER + 1e-9, (suite, task.task_id)
        assert spread.min() > JITTER / 2, (suite, task.task_id)  # every object moves from state to state


@pytest.mark.parametrize("suite", ["spatial", "object", "long"])
def test_init_states_keep_objects_apart(suite):
    for task in suite_tasks(suite):
        radii = {o.name: o.footprint_radius for o in task.objects}
        assert min(clearance(layout, radii) for layout in init_states(task)) >= MIN_GAP, (suite, task.task_id)


@pytest.mark.parametrize("suite", ["spatial", "object", "long"])
def test_tasks_have_arrangements_of_their_own(suite):
    firsts = [init_states(task, n=1)[0] for task in suite_tasks(suite)]
    for i, a in enumerate(firsts):
        for b in firsts[i + 1 :]:
            shared = set(a.objects) & set(b.objects)
            assert max(np.linalg.norm(a.xy(n) - b.xy(n)) for n in shared) > 0.05


def test_spatial_relation_holds_with_its_margin_in_every_init_state():
    for task, (_, _, (_, holds)) in zip(suite_tasks("spatial"), spatial._SPECS, strict=True):
        for layout in init_states(task) + init_states(task, "train", 50):
            assert holds({n: layout.xy(n) for n in layout.objects}), task.instruction


def test_fixed_arrangement_is_reproducible_and_reports_the_impossible():
    items = [Item("a", 0.03), Item("b", 0.03), Item("c", 0.03)]
    radii = {it.name: it.radius for it in items}
    make = lambda: fixed_arrangement(lambda rng: place_items(rng, items), arrangement_seed("x", 0), radii)
    a = make()(np.random.default_rng(5))
    b = make()(np.random.default_rng(5))
    assert a.objects == b.objects
    assert arrangement_seed("x", 0) != arrangement_seed("x", 1)
    huge = {"a": 0.4, "b": 0.4, "c": 0.4}  # cannot stand a gap apart on the table
    with pytest.raises(RuntimeError, match="no arrangement"):
        fixed_arrangement(lambda rng: place_items(rng, items), 0, huge)
    answers = iter([True])  # the arrangement passes, no jittered copy of it does
    draw = fixed_arrangement(lambda rng: place_items(rng, items), 0, radii, holds=lambda layout: next(answers, False))
    with pytest.raises(RuntimeError, match="condition failed"):
        draw(np.random.default_rng(0))
