"""Closed-loop scripted experts for the tabletop tasks (policy API: `reset()`, `select_action(obs)`).

Every call recomputes its targets from the simulator's current state (object poses, contacts, the
gripper), so the expert recovers when executed actions are perturbed (demos are collected with noise
injected): a dropped object is picked again, a missed grasp reopens and retries, a placement that did
not come to rest in the right place is redone. Motions are proportional with saturation (smooth).

Skills, one per task goal, done in order (the first goal that does not hold is worked on):
- PickPlace: approach above the object, yaw-align, descend, close, lift, carry at a safe height,
  descend over the destination (bowl, basket, plate, another cube), release, retreat upwards.
- Hold (Lift goals): pick, then hold the object up.
- Push: get behind the object on the line to the zone's centre with closed fingers, push, retreat.
- Pull (OpenDrawer goals): turn the fingers across the handle bar, descend around it half open, close,
  pull towards +x until the drawer is well open, let go, retreat.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np
from vla_accel.envs.tabletop.control import POS_SCALE, ROT_SCALE
from vla_accel.envs.tabletop.goals import (
    Goal,
    Lift,
    OpenDrawer,
    PlaceIn,
    PlaceOn,
    PushTo,
    Stack,
)
from vla_accel.envs.tabletop.objects import Container, Plate
from vla_accel.envs.tabletop.scene import FINGER_OPEN, WORKSPACE_HIGH, WORKSPACE_LOW
from vla_accel.envs.tabletop.sim import SimView

POS_GAIN = 0.8  # fraction of the position error commanded per step (before saturation)
MAX_SPEED = 0.7  # saturation of the translation command (0.7 = 1.4 cm per step): smooth, not hasty
CARRY_BOTTOM = 0.11  # m: object bottom height while carried (clears bowl/basket rims and cubes)
HOVER_ABOVE = 0.05  # m: eef height above an object's top before descending on it
RELEASE_DROP = 0.012  # m: object bottom above its resting surface when the fingers open
HOLD_BOTTOM = 0.15  # m: object bottom height while holding it up (Lift goals)
OPEN, CLOSE = -1.0, 1.0


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def _nearest_equivalent(angle: float, reference: float, period: float) -> float:
    """The angle equivalent to `angle` modulo `period` closest to `reference` (period 0: reference)."""
    if period <= 0:
        return reference
    return angle + period * round((reference - angle) / period)


class _Skill:
    def __init__(self, sim: SimView, goal: Goal, env):
        self.sim = sim
        self.goal = goal
        self.env = env
        self.obj = goal.obj
        self.spec = sim.specs.get(goal.obj)  # None for a drawer (not a loose object)

    def reset(self) -> None:
        pass

    def act(self) -> np.ndarray:
        raise NotImplementedError

    def finished(self) -> bool:
        """Whether the expert may move on to the next goal."""
        return self.goal.satisfied(self.sim)

    # -- motion primitive ---------------------------------------------------------------------------
    def move(self, target: np.ndarray, yaw: float, grip: float, speed: float = MAX_SPEED) -> np.ndarray:
        """(7,) action driving the eef towards `target` (world, m) at gripper yaw `yaw`, roll/pitch 0."""
        target = np.clip(target, WORKSPACE_LOW, WORKSPACE_HIGH)
        dpos = POS_GAIN * (target - self.sim.eef_pos) / POS_SCALE
        dpos /= max(1.0, float(np.abs(dpos).max()) / speed)  # saturate, keeping the direction
        err = np.empty(4)
        current = self.sim.eef_quat
        conj = current * np.array([1.0, -1.0, -1.0, -1.0])
        mujoco.mju_mulQuat(err, _yaw_quat(yaw), conj)
        if err[0] < 0:  # the short way round
            err = -err
        rotvec = np.zeros(3)
        mujoco.mju_quat2Vel(rotvec, err, 1.0)
        drot = POS_GAIN * rotvec / ROT_SCALE
        drot /= max(1.0, float(np.abs(drot).max()))
        return np.concatenate([dpos, drot, [grip]]).astype(np.float32)

    def yaw_error(self, yaw: float) -> float:
        return abs(math.remainder(yaw - self.sim.eef_yaw, 2 * math.pi))


class PickPlace(_Skill):
    """Pick `goal.obj` and put it at the goal's destination (container, plate, top of another object)."""

    def reset(self) -> None:
        self.mode = "approach"  # approach -> closing -> carry -> released (-> approach on failure)
        self.steps_in_mode = 0
        self.spot: tuple[float, float] | None = None  # drop spot in the container's frame
        self.release_z = 0.0

    def _set(self, mode: str) -> None:
        self.mode, self.steps_in_mode = mode, 0
        self.spot = None  # a new carry chooses its drop spot afresh

    # Destination: (xy of the object's centre, height of the surface it will rest on).
    def destination(self) -> tuple[np.ndarray, float]:
        g, s = self.goal, self.sim
        if isinstance(g, PlaceIn):
            spec = s.specs[g.container]
            assert isinstance(spec, Container)
            c = s.pos(g.container)
            return self._free_spot(g.container, spec), c[2] + spec.floor_top
        if isinstance(g, PlaceOn):
            spec = s.specs[g.support]
            assert isinstance(spec, Plate)
            c = s.pos(g.support)
            return c[:2], c[2] + spec.top_height
        if isinstance(g, Stack):
            c = s.pos(g.base)
            return c[:2], c[2] + s.specs[g.base].half_height
        raise TypeError(f"PickPlace cannot do {type(g).__name__}")

    def _free_spot(self, container: str, spec: Container) -> np.ndarray:
        """(2,) where in the container to drop: its centre, or, if other objects already lie in it, the
        one of four off-centre spots (container frame) farthest from them. The spot is chosen once per
        carry (ties between spots must not make the target flip) and re-expressed from the container's
        current pose every step."""
        s = self.sim
        c, yaw = s.pos(container), s.yaw(container)
        cs, sn = math.cos(yaw), math.sin(yaw)
        if self.spot is None:
            inside = [
                s.pos(n)[:2]
                for n, o in s.specs.items()
                if o.graspable and n != self.obj and np.linalg.norm(s.pos(n)[:2] - c[:2]) < spec.inner
                and s.pos(n)[2] < c[2] + spec.rim_height
            ]
            if not inside:
                self.spot = (0.0, 0.0)
            else:
                r = spec.inner - 0.035  # keeps a 3.5 cm half-width object clear of the wall
                offsets = [(r, 0.0), (-r, 0.0), (0.0, r), (0.0, -r)]

                def clearance(o: tuple[float, float]) -> float:
                    p = c[:2] + np.array([cs * o[0] - sn * o[1], sn * o[0] + cs * o[1]])
                    return min(float(np.linalg.norm(p - q)) for q in inside)

                self.spot = max(offsets, key=clearance)
        dx, dy = self.spot
        return c[:2] + np.array([cs * dx - sn * dy, sn * dx + cs * dy])

    def act(self) -> np.ndarray:
        self.steps_in_mode += 1
        s = self.sim
        grasped = s.grasped(self.obj)
        if self.mode == "released":
            # Retreat straight up; if the object did not end up resting in place, start over.
            if self.steps_in_mode > 30 and not self.goal.satisfied(s) and not grasped:
                self._set("approach")
            else:
                # Open in place first (rising while the fingers still touch it would drag the object
                # along and can tip it over), then retreat straight up.
                e = s.eef_pos
                z = self.release_z if self.steps_in_mode <= 3 else min(self.release_z + 0.10, WORKSPACE_HIGH[2])
                return self.move(np.array([e[0], e[1], z]), s.eef_yaw, OPEN)
        if self.mode == "closing":
            if grasped and self.steps_in_mode >= 4:
                self._set("carry")
            elif self.steps_in_mode > 14:
                self._set("approach")  # missed: reopen and try again
            else:
                return self.move(self._grasp_point(), s.eef_yaw, CLOSE)
        if self.mode == "carry":
            if not grasped:
                self._set("approach")  # dropped
            else:
                return self.carry()
        return self.approach()

    def _grasp_yaw(self) -> float:
        """Gripper yaw that closes the fingers across the object: aligned with its faces when upright,
        across its long axis when it has been knocked over onto its side."""
        s = self.sim
        up = s.up_axis(self.obj)
        if abs(up[2]) < 0.5:
            return _nearest_equivalent(math.atan2(up[1], up[0]), s.eef_yaw, math.pi)
        return _nearest_equivalent(s.yaw(self.obj), s.eef_yaw, self.spec.yaw_symmetry)

    def _grasp_point(self) -> np.ndarray:
        p = self.sim.pos(self.obj)
        return np.array([p[0], p[1], max(p[2], WORKSPACE_LOW[2] + 0.003)])

    def approach(self) -> np.ndarray:
        s = self.sim
        p, e = s.pos(self.obj), s.eef_pos
        yaw = self._grasp_yaw()
        hover_z = p[2] + self.spec.half_height + HOVER_ABOVE
        grasp = self._grasp_point()
        xy_err = float(np.linalg.norm(e[:2] - p[:2]))
        low = e[2] < hover_z - 0.02
        fingers_open = float(s.finger_qpos.min()) > FINGER_OPEN - 0.008
        if low and (xy_err > 0.03 or not fingers_open):
            # Too low to travel or fingers still closed near the object: open and rise in place.
            return self.move(np.array([e[0], e[1], hover_z]), yaw, OPEN)
        if not low and (xy_err > 0.012 or self.yaw_error(yaw) > 0.15 or not fingers_open):
            return self.move(np.array([p[0], p[1], hover_z]), yaw, OPEN)
        # Descend onto the object, tracking it.
        if abs(e[2] - grasp[2]) < 0.006 and xy_err < 0.01:
            self._set("closing")
            return self.move(grasp, yaw, CLOSE)
        return self.move(grasp, yaw, OPEN)

    def carry(self) -> np.ndarray:
        s = self.sim
        p, e = s.pos(self.obj), s.eef_pos
        dest_xy, surface_z = self.destination()
        offset = p[2] - e[2]  # object centre relative to the eef (the grip is not exactly centred)
        half = self.spec.half_height
        carry_z = CARRY_BOTTOM + half - offset
        release_z = surface_z + half + RELEASE_DROP - offset
        xy_err = float(np.linalg.norm(dest_xy - p[:2]))
        eef_xy = e[:2] + (dest_xy - p[:2])
        low = e[2] < carry_z - 0.02
        if (low and xy_err > 0.03) or (not low and xy_err > 0.012):
            if low and xy_err > 0.03:
                return self.move(np.array([e[0], e[1], carry_z]), s.eef_yaw, CLOSE)
            return self.move(np.array([*eef_xy, carry_z]), s.eef_yaw, CLOSE)
        if e[2] - release_z < 0.008:
            self.release_z = release_z
            self._set("released")
            return self.move(np.array([*eef_xy, release_z]), s.eef_yaw, OPEN)
        return self.move(np.array([*eef_xy, release_z]), s.eef_yaw, CLOSE, speed=0.6)


class Hold(PickPlace):
    """Pick the object and hold it up (Lift goals): carry means rising to HOLD_BOTTOM and staying."""

    def carry(self) -> np.ndarray:
        s = self.sim
        p, e = s.pos(self.obj), s.eef_pos
        hold_z = HOLD_BOTTOM + self.spec.half_height - (p[2] - e[2])
        return self.move(np.array([e[0], e[1], hold_z]), s.eef_yaw, CLOSE, speed=0.7)


class Push(_Skill):
    """Push the object with the closed fingers along the line to the zone's centre."""

    PUSH_Z = 0.022  # eef height while pushing (finger tips 7 mm above the table)
    SAFE_Z = 0.09  # eef height for moving around objects

    def reset(self) -> None:
        self.done = False

    def act(self) -> np.ndarray:
        s = self.sim
        g = self.goal
        assert isinstance(g, PushTo)
        p, e = s.pos(self.obj), s.eef_pos
        zone = s.zone_pos(g.zone)[:2]
        d = zone - p[:2]
        dist = float(np.linalg.norm(d))
        hx, hy = s.zone_half(g.zone)
        inside = abs(d[0]) < hx - 0.025 and abs(d[1]) < hy - 0.025
        if inside or self.done:
            self.done = inside
            return self.move(np.array([e[0], e[1], self.SAFE_Z]), s.eef_yaw, CLOSE)
        u = d / dist
        perp = np.array([-u[1], u[0]])
        yaw = _nearest_equivalent(math.atan2(u[1], u[0]), s.eef_yaw, math.pi)
        reach = self.spec.footprint_radius + 0.012  # eef-to-object-centre distance at contact
        behind = p[:2] - u * (reach + 0.015)
        along = float(np.dot(e[:2] - p[:2], u))
        lateral = float(np.dot(e[:2] - p[:2], perp))
        low = e[2] < 0.05
        if low and along < -reach + 0.012 and abs(lateral) < 0.02 and self.yaw_error(yaw) < 0.3:
            # In contact position: advance along u, steering back onto the line through the object.
            step = e[:2] + u * 0.02 - perp * lateral
            return self.move(np.array([*step, self.PUSH_Z]), yaw, CLOSE, speed=0.5)
        far = float(np.linalg.norm(e[:2] - behind))
        if low and far > 0.015:
            return self.move(np.array([e[0], e[1], self.SAFE_Z]), yaw, CLOSE)
        if far > 0.01 or self.yaw_error(yaw) > 0.2:
            return self.move(np.array([*behind, max(e[2], self.SAFE_Z) if far > 0.01 else e[2]]), yaw, CLOSE)
        return self.move(np.array([*behind, self.PUSH_Z]), yaw, CLOSE)


class Pull(_Skill):
    """Open a drawer: cage its handle bar between the fingers and pull it out along +x."""

    OPEN_TARGET = 0.11  # m: pull this far (the goal needs 0.08)
    HALF_OPEN = -0.3  # gripper command: fingers 2.6 cm from the centre, room around the bar, clear of the front
    HOVER = 0.05  # m above the handle before descending

    def reset(self) -> None:
        self.mode = "approach"  # approach -> closing -> pull -> release
        self.steps_in_mode = 0
        self.cleared = False

    def _set(self, mode: str) -> None:
        self.mode, self.steps_in_mode = mode, 0

    def finished(self) -> bool:
        """Open, and the gripper has let go and risen clear of the handle once (from then on the next
        skill may open the fingers wide and go low again)."""
        s = self.sim
        if self.mode == "release" and s.eef_pos[2] > s.handle_pos(self.obj)[2] + 0.06:
            self.cleared = True
        return self.cleared and self.goal.satisfied(s)

    def act(self) -> np.ndarray:
        self.steps_in_mode += 1
        s = self.sim
        handle, e = s.handle_pos(self.obj), s.eef_pos
        # Fingers close along the gripper's y axis: turn it to world x, across the bar (which runs along y).
        yaw = _nearest_equivalent(math.pi / 2, s.eef_yaw, math.pi)
        xy_err = float(np.linalg.norm(e[:2] - handle[:2]))
        if self.cleared:  # it was open and let go, but has been pushed shut again: start over
            self.cleared = False
            self._set("approach")
        if s.drawer_opening(self.obj) >= self.OPEN_TARGET and self.mode != "release":
            self._set("release")
        if self.mode == "release":
            # Only half open: wide open, the rear finger would push the drawer front back in.
            z = e[2] if self.steps_in_mode <= 3 else handle[2] + 0.12
            return self.move(np.array([e[0], e[1], z]), s.eef_yaw, self.HALF_OPEN)
        if self.mode == "pull":
            if xy_err > 0.02 or abs(e[2] - handle[2]) > 0.015:
                self._set("approach")  # slipped off the handle
            else:
                target = handle + np.array([0.03, 0.0, 0.0])
                return self.move(target, yaw, CLOSE, speed=0.5)
        if self.mode == "closing":
            if self.steps_in_mode >= 5:
                self._set("pull")
            return self.move(handle, yaw, CLOSE)
        hover = handle + np.array([0.0, 0.0, self.HOVER])
        low = e[2] < hover[2] - 0.02
        fingers_open = float(s.finger_qpos.min()) > 0.018
        if low and (xy_err > 0.02 or not fingers_open):
            return self.move(np.array([e[0], e[1], hover[2]]), yaw, self.HALF_OPEN)
        if not low and (xy_err > 0.01 or self.yaw_error(yaw) > 0.1):
            return self.move(hover, yaw, self.HALF_OPEN)
        if abs(e[2] - handle[2]) < 0.006 and xy_err < 0.008:
            self._set("closing")
            return self.move(handle, yaw, CLOSE)
        return self.move(handle, yaw, self.HALF_OPEN)


def _skill_for(goal: Goal, sim: SimView, env) -> _Skill:
    if isinstance(goal, OpenDrawer):
        return Pull(sim, goal, env)
    if isinstance(goal, Lift):
        return Hold(sim, goal, env)
    if isinstance(goal, PushTo):
        return Push(sim, goal, env)
    return PickPlace(sim, goal, env)


class ScriptedExpert:
    """The expert of one env instance: one skill per goal, the first unmet goal is worked on."""

    def __init__(self, env):
        self.env = env
        self.sim: SimView = env.sim
        self.skills = [_skill_for(g, self.sim, env) for g in env.task.goals]
        self.reset()

    def reset(self) -> None:
        for skill in self.skills:
            skill.reset()

    def select_action(self, obs=None) -> np.ndarray:
        """(7,) float32 action for the env's current state (`obs` is not needed: privileged state)."""
        for skill in self.skills:
            if not skill.finished():
                return skill.act()
        return self.skills[-1].act()  # everything holds: keep the last skill's retreat or hold
