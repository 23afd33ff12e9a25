"""Task goals: success predicates on the simulator state, physically real ones.

A placement counts only once the object rests where it should (slow, released by the fingers, upright
container, actually inside or supported), never while it is carried through the target. A task's
success is the conjunction of its goals holding at the same time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from vla_accel.envs.tabletop.objects import Container, Plate
from vla_accel.envs.tabletop.sim import SimView

REST_SPEED = 0.03  # m/s: slower than this counts as resting
LIFT_HEIGHT = 0.10  # m: an object's bottom this high above the table counts as lifted
DRAWER_OPEN = 0.08  # m: a drawer pulled out this far counts as open


def _in_frame(sim: SimView, p: np.ndarray, frame: str) -> np.ndarray:
    """(3,) point p in the yaw-only frame of object `frame` (containers stay upright)."""
    c = sim.pos(frame)
    yaw = sim.yaw(frame)
    d = p - c
    cs, sn = math.cos(yaw), math.sin(yaw)
    return np.array([cs * d[0] + sn * d[1], -sn * d[0] + cs * d[1], d[2]])


def resting(sim: SimView, obj: str) -> bool:
    return sim.speed(obj) < REST_SPEED and not sim.touches_finger(obj)


@dataclass(frozen=True)
class Goal:
    obj: str

    def satisfied(self, sim: SimView) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class PlaceIn(Goal):
    """`obj` rests inside the container (bowl or basket)."""

    container: str

    def satisfied(self, sim: SimView) -> bool:
        spec = sim.specs[self.container]
        assert isinstance(spec, Container)
        if sim.up_axis(self.container)[2] < 0.9:  # container tipped over
            return False
        rel = _in_frame(sim, sim.pos(self.obj), self.container)
        if spec.shape == "bowl":
            inside = math.hypot(rel[0], rel[1]) < spec.inner
        else:
            inside = abs(rel[0]) < spec.inner and abs(rel[1]) < spec.inner
        below_rim = rel[2] < spec.rim_height
        return inside and below_rim and resting(sim, self.obj)


@dataclass(frozen=True)
class PlaceOn(Goal):
    """`obj` rests on the plate (in contact with it, within its rim)."""

    support: str

    def satisfied(self, sim: SimView) -> bool:
        spec = sim.specs[self.support]
        assert isinstance(spec, Plate)
        rel = _in_frame(sim, sim.pos(self.obj), self.support)
        return (
            math.hypot(rel[0], rel[1]) < spec.support_radius
            and sim.touching(self.obj, self.support)
            and resting(sim, self.obj)
        )


@dataclass(frozen=True)
class Stack(Goal):
    """`obj` rests on top of `base` (centred within 2.5 cm, in contact, base still on the table)."""

    base: str

    def satisfied(self, sim: SimView) -> bool:
        top, bottom = sim.pos(self.obj), sim.pos(self.base)
        h = sim.specs[self.obj].half_height + sim.specs[self.base].half_height
        return (
            math.hypot(*(top[:2] - bottom[:2])) < 0.025
            and top[2] - bottom[2] > h - 0.01
            and sim.touching(self.obj, self.base)
            and sim.touching(self.base, "table")
            and resting(sim, self.obj)
        )


@dataclass(frozen=True)
class Lift(Goal):
    """`obj` is held between both fingers with its bottom at least LIFT_HEIGHT above the table."""

    def satisfied(self, sim: SimView) -> bool:
        bottom = sim.pos(self.obj)[2] - sim.specs[self.obj].half_height
        return bottom > LIFT_HEIGHT and sim.grasped(self.obj)


@dataclass(frozen=True)
class PushTo(Goal):
    """`obj` stands on the table with its centre inside the zone, no longer sliding."""

    zone: str

    def satisfied(self, sim: SimView) -> bool:
        rel = sim.pos(self.obj)[:2] - sim.zone_pos(self.zone)[:2]
        hx, hy = sim.zone_half(self.zone)
        return (
            abs(rel[0]) < hx
            and abs(rel[1]) < hy
            and sim.touching(self.obj, "table")
            and sim.speed(self.obj) < REST_SPEED
        )


@dataclass(frozen=True)
class OpenDrawer(Goal):
    """The drawer named `obj` is pulled out at least DRAWER_OPEN (it has friction: it stays out)."""

    def satisfied(self, sim: SimView) -> bool:
        return sim.drawer_opening(self.obj) >= DRAWER_OPEN


def all_satisfied(goals: tuple[Goal, ...], sim: SimView) -> bool:
    return all(g.satisfied(sim) for g in goals)
