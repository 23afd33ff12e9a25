"""Privileged read access to the tabletop simulation: poses, velocities, contacts, gripper state.

Used by the success predicates and the scripted expert (never by learned policies, which see pixels).
"""

from __future__ import annotations

import math

import mujoco
import numpy as np
from vla_accel.envs.tabletop.objects import Drawer, ObjectSpec, Zone


class SimView:
    """Named accessors over one `(MjModel, MjData)` pair and the task's object specs."""

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        objects: tuple[ObjectSpec, ...],
        zones: tuple[Zone, ...] = (),
        drawers: tuple[Drawer, ...] = (),
    ):
        self.model = model
        self.data = data
        self.specs = {o.name: o for o in objects}
        self.zones = {z.name: z for z in zones}
        self._zone_mocap = {z.name: int(model.body_mocapid[model.body(z.name).id]) for z in zones}
        self.drawers = {d.name: d for d in drawers}
        self._drawer_mocap = {d.name: int(model.body_mocapid[model.body(d.cabinet_body).id]) for d in drawers}
        self._drawer_qadr = {d.name: int(model.jnt_qposadr[model.joint(d.joint).id]) for d in drawers}
        self._drawer_handle = {d.name: model.site(d.handle_site).id for d in drawers}
        self._body = {name: model.body(name).id for name in self.specs}
        self._qadr = {name: model.jnt_qposadr[model.body_jntadr[self._body[name]]] for name in self.specs}
        self._dadr = {name: model.jnt_dofadr[model.body_jntadr[self._body[name]]] for name in self.specs}
        self.finger_left = model.body("finger_left").id
        self.finger_right = model.body("finger_right").id
        self.gripper_body = model.body("gripper").id
        self._gripper_qadr = model.jnt_qposadr[model.joint("gripper_joint").id]
        self._mocap = model.body_mocapid[model.body("gripper_target").id]
        self._eef_site = model.site("eef").id
        self._finger_qadr = [model.jnt_qposadr[model.joint(j).id] for j in ("finger_left_joint", "finger_right_joint")]
        self._table_geom = model.geom("table").id
        self._contact_cache_key = None
        self._contact_pairs: set[tuple[int, int]] = set()

    # -- objects ------------------------------------------------------------------------------------
    def pos(self, name: str) -> np.ndarray:
        """(3,) world position of an object's frame (its bounding-box centre)."""
        a = self._qadr[name]
        return self.data.qpos[a : a + 3].copy()

    def quat(self, name: str) -> np.ndarray:
        a = self._qadr[name]
        return self.data.qpos[a + 3 : a + 7].copy()

    def yaw(self, name: str) -> float:
        w, x, y, z = self.quat(name)
        return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))

    def up_axis(self, name: str) -> np.ndarray:
        """(3,) the object's local z axis in world coordinates (tilt check)."""
        return self.data.xmat[self._body[name]].reshape(3, 3)[:, 2].copy()

    def speed(self, name: str) -> float:
        """Linear speed (m/s) of the object's frame."""
        a = self._dadr[name]
        return float(np.linalg.norm(self.data.qvel[a : a + 3]))

    def set_pose(self, name: str, pos: np.ndarray, yaw: float) -> None:
        a = self._qadr[name]
        self.data.qpos[a : a + 3] = pos
        self.data.qpos[a + 3 : a + 7] = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]

    # -- zones --------------------------------------------------------------------------------------
    def zone_pos(self, name: str) -> np.ndarray:
        return self.data.mocap_pos[self._zone_mocap[name]].copy()

    def zone_half(self, name: str) -> tuple[float, float]:
        return self.zones[name].half

    def set_zone(self, name: str, x: float, y: float) -> None:
        self.data.mocap_pos[self._zone_mocap[name]] = [x, y, 0.0]

    # -- drawers ------------------------------------------------------------------------------------
    def drawer_opening(self, name: str) -> float:
        """How far (m) the drawer is pulled out, 0 = closed."""
        return float(self.data.qpos[self._drawer_qadr[name]])

    def handle_pos(self, name: str) -> np.ndarray:
        """(3,) world position of the drawer handle bar's centre."""
        return self.data.site_xpos[self._drawer_handle[name]].copy()

    def set_drawer(self, name: str, x: float, y: float) -> None:
        """Place the cabinet (reset only; the drawer itself starts closed)."""
        self.data.mocap_pos[self._drawer_mocap[name]] = [x, y, self.drawers[name].half[2]]
        self.data.qpos[self._drawer_qadr[name]] = 0.0

    # -- contacts -----------------------------------------------------------------------------------
    def _pairs(self) -> set[tuple[int, int]]:
        key = (self.data.time, self.data.ncon)
        if key != self._contact_cache_key:
            geom_body = self.model.geom_bodyid
            pairs = set()
            for c in self.data.contact[: self.data.ncon]:
                b1, b2 = int(geom_body[c.geom1]), int(geom_body[c.geom2])
                pairs.add((b1, b2))
                pairs.add((b2, b1))
            self._contact_pairs = pairs
            self._contact_cache_key = key
        return self._contact_pairs

    def touching(self, a: str, b: str) -> bool:
        """Whether objects (or 'finger_left'/'finger_right'/'table') `a` and `b` are in contact."""
        return (self._id(a), self._id(b)) in self._pairs()

    def _id(self, name: str) -> int:
        if name == "table":
            return 0  # the table is a world-body geom
        return self._body[name] if name in self._body else self.model.body(name).id

    def touches_finger(self, name: str) -> bool:
        pairs = self._pairs()
        b = self._body[name]
        return (b, self.finger_left) in pairs or (b, self.finger_right) in pairs

    def grasped(self, name: str) -> bool:
        """Held between both fingers (each finger in contact with the object)."""
        pairs = self._pairs()
        b = self._body[name]
        return (b, self.finger_left) in pairs and (b, self.finger_right) in pairs

    # -- gripper ------------------------------------------------------------------------------------
    @property
    def eef_pos(self) -> np.ndarray:
        """(3,) the end-effector point (gripper body origin, between the fingertips), actual pose."""
        a = self._gripper_qadr
        return self.data.qpos[a : a + 3].copy()

    @property
    def eef_quat(self) -> np.ndarray:
        """(4,) actual gripper orientation, wxyz; identity = pointing straight down, yaw 0."""
        a = self._gripper_qadr
        return self.data.qpos[a + 3 : a + 7].copy()

    def set_gripper(self, pos: np.ndarray, quat: np.ndarray) -> None:
        """Place both the gripper and its mocap target (reset only)."""
        a = self._gripper_qadr
        self.data.qpos[a : a + 3] = pos
        self.data.qpos[a + 3 : a + 7] = quat
        self.data.mocap_pos[self._mocap] = pos
        self.data.mocap_quat[self._mocap] = quat

    @property
    def mocap_index(self) -> int:
        return int(self._mocap)

    @property
    def eef_yaw(self) -> float:
        w, x, y, z = self.eef_quat
        return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))

    def set_fingers(self, q: float) -> None:
        """Both finger joints to `q` metres (reset only)."""
        self.data.qpos[self._finger_qadr] = q

    @property
    def finger_qpos(self) -> np.ndarray:
        """(2,) finger joint positions (0 = closed, FINGER_OPEN = open)."""
        return self.data.qpos[self._finger_qadr].copy()
