"""Seeded scene layouts: object positions with minimum separation, small random yaw.

A layout maps each object name to `(x, y, yaw)` on the table and each zone and drawer cabinet name
to `(x, y)`. As in LIBERO, each task has one arrangement of its objects and its 50 init states move
it by a few cm (`fixed_arrangement`, `jittered`); they are drawn from 50 fixed seeds derived from
(suite, task_id, index), so they are the same on every machine and every run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

NUM_INIT_STATES = 50
INIT_SPLITS = ("eval", "train")  # reset(options={"split": ...}): evaluation states or training layouts

# Where objects may stand (metres, table frame): in front of the gripper's home, inside both cameras.
TABLE_REGION = (-0.22, 0.22, -0.30, 0.30)  # x_lo, x_hi, y_lo, y_hi
MIN_GAP = 0.025  # free space between two objects' footprint circles
MAX_YAW = 0.35  # rad, the random yaw of objects about their upright axis
# Per-axis jitter of a fixed arrangement. LIBERO's BDDL init regions are 2-5 cm boxes per object, so
# each LIBERO task is one arrangement moved by a few cm, not a fresh scatter over the table.
JITTER = 0.015

Region = tuple[float, float, float, float]


@dataclass
class Layout:
    objects: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # name -> x, y, yaw
    zones: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> x, y
    drawers: dict[str, tuple[float, float]] = field(default_factory=dict)  # cabinet name -> x, y

    def xy(self, name: str) -> np.ndarray:
        return np.array(self.objects[name][:2])


def init_state_seed(suite: str, task_id: int, index: int, split: str = "eval") -> int:
    """A stable 64-bit seed for one init state (Python's hash() is salted per process, so not that).

    split "eval" gives the task's 50 fixed evaluation init states; split "train" gives an unbounded
    stream of other layouts from the same distribution, so that demonstrations never show a policy
    the scenes it is evaluated on (LIBERO's demos and its evaluation init states are distinct too).
    """
    tag = "" if split == "eval" else f"/{split}"  # eval seeds stay those of the published 50 states
    digest = hashlib.sha256(f"vla_accel/tabletop/{suite}/{task_id}/{index}{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class Item:
    """One object to place: `region` is fixed or computed from the positions placed before it."""

    name: str
    radius: float
    region: Region | Callable[[dict[str, np.ndarray]], Region] = TABLE_REGION
    yaw: bool = True  # False: yaw 0 (round things, whose yaw does not show)


def place_items(
    rng: np.random.Generator,
    items: list[Item],
    gap: float = MIN_GAP,
    avoid: list[tuple[np.ndarray, float]] = (),
    tries: int = 200,
) -> Layout:
    """Rejection-sample positions in order, each at least `gap` clear of those before it and of the
    `avoid` circles (centre, radius). Restarts from scratch if one item finds no room."""
    for _ in range(tries):
        placed: dict[str, np.ndarray] = {}
        radii: dict[str, float] = {}
        ok = True
        for it in items:
            region = it.region(placed) if callable(it.region) else it.region
            for _ in range(200):
                p = np.array([rng.uniform(region[0], region[1]), rng.uniform(region[2], region[3])])
                if all(np.linalg.norm(p - q) >= it.radius + radii[n] + gap for n, q in placed.items()) and all(
                    np.linalg.norm(p - c) >= it.radius + r + gap for c, r in avoid
                ):
                    placed[it.name] = p
                    radii[it.name] = it.radius
                    break
            else:
                ok = False
                break
        if ok:
            layout = Layout()
            for it in items:
                yaw = rng.uniform(-MAX_YAW, MAX_YAW) if it.yaw else 0.0
                layout.objects[it.name] = (float(placed[it.name][0]), float(placed[it.name][1]), float(yaw))
            return layout
    raise RuntimeError(f"could not place {[it.name for it in items]} with gap {gap} in {tries} tries")


def jittered(rng: np.random.Generator, nominal: dict[str, tuple[float, float]], jitter: float, yaw: dict[str, bool]) -> Layout:
    """A fixed layout moved by a uniform jitter of +-`jitter` metres per object (LIBERO-goal style)."""
    layout = Layout()
    for name, (x, y) in nominal.items():
        dx, dy = rng.uniform(-jitter, jitter, size=2)
        a = rng.uniform(-MAX_YAW, MAX_YAW) if yaw.get(name, True) else 0.0
        layout.objects[name] = (x + float(dx), y + float(dy), float(a))
    return layout


def arrangement_seed(suite: str, task_id: int) -> int:
    """The seed of a task's one fixed arrangement (see `fixed_arrangement`)."""
    digest = hashlib.sha256(f"vla_accel/tabletop/{suite}/{task_id}/arrangement".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def clearance(layout: Layout, radii: dict[str, float], avoid: list[tuple[np.ndarray, float]] = ()) -> float:
    """The smallest free space between two objects' footprint circles, or an object and an `avoid` circle."""
    names = list(layout.objects)
    gaps = [
        distance(layout.xy(a), layout.xy(b)) - radii[a] - radii[b] for i, a in enumerate(names) for b in names[i + 1 :]
    ]
    gaps += [distance(layout.xy(n), c) - radii[n] - r for n in names for c, r in avoid]
    return min(gaps, default=math.inf)


def fixed_arrangement(
    sample: Callable[[np.random.Generator], Layout],
    seed: int,
    radii: dict[str, float],
    jitter: float = JITTER,
    holds: Callable[[Layout], bool] = lambda layout: True,
    avoid: list[tuple[np.ndarray, float]] = (),
) -> Callable[[np.random.Generator], Layout]:
    """LIBERO-style init states: ONE arrangement per task, drawn once from `sample` with the task's own
    `seed`, then moved by +-`jitter` metres per object and axis (yaw redrawn) for each init state.

    The arrangement is redrawn until it keeps `MIN_GAP` plus the most that two jittered objects can
    close in (2 sqrt(2) jitter), so no init state puts objects closer than `MIN_GAP`; `holds` (the
    task's own condition, e.g. a spatial relation) must hold for the arrangement and every init state.
    """
    rng = np.random.default_rng(seed)
    margin = MIN_GAP + 2 * math.sqrt(2) * jitter
    for _ in range(1000):
        nominal = sample(rng)
        if clearance(nominal, radii, avoid) >= margin and holds(nominal):
            break
    else:
        raise RuntimeError(f"no arrangement of {list(radii)} keeps a gap of {margin:.3f} m and the task's condition")
    positions = {n: (x, y) for n, (x, y, _) in nominal.objects.items()}
    turns = {n: a != 0.0 for n, (_, _, a) in nominal.objects.items()}  # round things (yaw 0 here) keep yaw 0

    def draw(rng: np.random.Generator) -> Layout:
        for _ in range(200):
            layout = jittered(rng, positions, jitter, yaw=turns)
            layout.zones = dict(nominal.zones)
            for name, (x, y) in nominal.drawers.items():
                dx, dy = rng.uniform(-jitter, jitter, size=2)
                layout.drawers[name] = (x + float(dx), y + float(dy))
            if holds(layout):
                return layout
        raise RuntimeError("the task's condition failed on 200 jittered arrangements")

    return draw


def around(center: np.ndarray, half: float) -> Region:
    return (center[0] - half, center[0] + half, center[1] - half, center[1] + half)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(math.hypot(*(a - b)))
