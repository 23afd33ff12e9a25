"""The tabletop gymnasium environment (docs/interfaces.md, "Environments").

Action: 7-D delta end-effector command in [-1, 1], applied at `control_hz` (20 Hz by default):

    [dx, dy, dz, droll, dpitch, dyaw, gripper]
    - dx, dy, dz: 1.0 = 2 cm of end-effector motion per control step, world frame (POS_SCALE)
    - droll, dpitch, dyaw: 1.0 = 0.1 rad per control step about the world x, y, z axes (ROT_SCALE)
    - gripper: -1 = open (8 cm), +1 = closed; values in between command a proportional opening

Values outside [-1, 1] are clipped to it; an action of the wrong shape or holding NaN/inf raises
ValueError. The action moves a target pose (previous target + delta); the target position is clipped
to the workspace box (scene.WORKSPACE_*) and kept within 4 cm of the real end effector (so a blocked
gripper does not wind up). Each control step runs `round(1 / (control_hz * 0.005))` physics steps of
5 ms, moving the target along a straight line (and a uniform rotation); the gripper follows it through
a stiff weld constraint, trailing by a few millimetres at full speed.

Observation: `agentview_image`, `wrist_image` (uint8 (H, W, 3), upright), `state` (float32 (8,):
eef position, eef axis-angle with 0 = gripper pointing straight down at yaw 0, two finger joint
positions in [0, 0.04] m, 0 = closed), `instruction` (text).
"""

from __future__ import annotations

import atexit
import numbers
import string
import weakref
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from vla_accel.envs._interface import validate_action
from vla_accel.envs.tabletop.control import POS_SCALE, ROT_SCALE
from vla_accel.envs.tabletop.goals import all_satisfied
from vla_accel.envs.tabletop.layout import INIT_SPLITS, NUM_INIT_STATES, init_state_seed
from vla_accel.envs.tabletop.scene import (
    FINGER_OPEN,
    GRIPPER_HOME,
    PHYSICS_TIMESTEP,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    SceneSpec,
    build_scene_xml,
)
from vla_accel.envs.tabletop.sim import SimView
from vla_accel.envs.tabletop.tasks import get_task

MAX_TARGET_LEAD = 0.04  # metres the commanded target may lead the actual end-effector
HOME_JITTER = 0.01  # metres: the gripper's start position varies this much between init states
# Bounds of `state`: the workspace box with a margin (contacts can push the gripper a little off its
# target), axis-angle components in [-pi, pi], finger positions in their joint range with a margin.
STATE_LOW = np.concatenate([WORKSPACE_LOW - 0.1, [-np.pi] * 3, [-0.01] * 2]).astype(np.float32)
STATE_HIGH = np.concatenate([WORKSPACE_HIGH + 0.1, [np.pi] * 3, [FINGER_OPEN + 0.01] * 2]).astype(np.float32)
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " .,;:'-_()/"


# Envs that hold a renderer. Their GL contexts are freed at interpreter exit by an atexit hook that
# must run while EGL is still initialised: mujoco's EGL backend registers its own hook (terminating
# the display) when the first renderer is made, and atexit runs hooks last-in first-out, so ours is
# registered right after that first renderer. Left to finalisers at shutdown, freeing fails noisily.
_LIVE_RENDERING_ENVS: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _close_renderers_at_exit() -> None:
    for env in list(_LIVE_RENDERING_ENVS):
        env.close()


def _track_renderer(env: TabletopEnv) -> None:
    global _exit_hook_registered
    _LIVE_RENDERING_ENVS.add(env)
    if not _exit_hook_registered:
        atexit.register(_close_renderers_at_exit)
        _exit_hook_registered = True


class TabletopEnv(gym.Env):
    """One task of one tabletop suite. Build with `make_tabletop_env(suite, task_id, ...)`."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str = "spatial",
        task_id: int = 0,
        image_size: int = 128,
        control_hz: float = 20.0,
        render_mode: str | None = "rgb_array",
        render_images: bool = True,
    ):
        """`render_images=False` skips both cameras (observation images are all zeros): for runs that
        only need the simulator, such as checking the scripted expert's success rate."""
        self.task = get_task(suite, task_id)
        if not isinstance(image_size, numbers.Integral) or not 16 <= image_size <= 640:
            raise ValueError(f"image_size must be an integer in 16..640, got {image_size!r}")
        if not isinstance(control_hz, numbers.Real) or not 1.0 <= control_hz <= 1.0 / PHYSICS_TIMESTEP:
            raise ValueError(f"control_hz must be in 1..{1.0 / PHYSICS_TIMESTEP:g}, got {control_hz!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.suite = suite
        self.task_id = int(task_id)
        self.image_size = int(image_size)
        self.control_hz = float(control_hz)
        self.render_mode = render_mode
        self.render_images = bool(render_images)
        self.n_substeps = max(1, round(1.0 / (self.control_hz * PHYSICS_TIMESTEP)))
        self.metadata = {**self.metadata, "render_fps": self.control_hz}

        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(
            SceneSpec(self.task.objects, self.task.zones, self.task.drawers)
        ))
        self.data = mujoco.MjData(self.model)
        self.sim = SimView(self.model, self.data, self.task.objects, self.task.zones, self.task.drawers)
        self._renderer: mujoco.Renderer | None = None
        self._agent_cam = self.model.camera("agentview").id
        self._wrist_cam = self.model.camera("wrist").id

        hw = (self.image_size, self.image_size, 3)
        self.observation_space = spaces.Dict(
            {
                "agentview_image": spaces.Box(0, 255, hw, np.uint8),
                "wrist_image": spaces.Box(0, 255, hw, np.uint8),
                "state": spaces.Box(STATE_LOW, STATE_HIGH, (8,), np.float32),
                "instruction": spaces.Text(max_length=256, min_length=1, charset=INSTRUCTION_CHARSET),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.instruction = self.task.instruction
        self.max_steps = self.task.max_steps
        self.init_state_id = 0
        self.init_split = "eval"
        self._steps = -1  # -1 until the first reset()
        self._target_pos = GRIPPER_HOME.copy()
        self._target_quat = np.array([1.0, 0.0, 0.0, 0.0])

    # -- gymnasium API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"init_state_id", "split"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; valid: ['init_state_id', 'split']")
        split = options.get("split", "eval")
        if split not in INIT_SPLITS:
            raise ValueError(f"split must be one of {list(INIT_SPLITS)}, got {split!r}")
        # eval: the task's 50 fixed init states; train: any index >= 0, layouts disjoint from eval's.
        n_valid = NUM_INIT_STATES if split == "eval" else None
        if options.get("init_state_id") is None:
            index = int(self.np_random.integers(NUM_INIT_STATES))
        else:
            index = options["init_state_id"]
            valid = isinstance(index, numbers.Integral) and not isinstance(index, bool) and index >= 0
            if not valid or (n_valid is not None and index >= n_valid):
                bound = f"0..{n_valid - 1}" if n_valid is not None else ">= 0"
                raise ValueError(f"init_state_id must be an integer in {bound} for split {split!r}, got {index!r}")
        self.init_state_id = int(index)
        self.init_split = split
        self._apply_init_state(self.init_state_id, split)
        self._steps = 0
        return self._observation(), self._info(False)

    def step(self, action):
        if self._steps < 0:
            raise RuntimeError("call reset() before step()")
        a = validate_action(action).astype(np.float64)  # (7,), clipped; bad shape/NaN -> ValueError
        self._apply_action(a)
        self._steps += 1
        success = all_satisfied(self.task.goals, self.sim)
        truncated = self._steps >= self.max_steps
        return self._observation(), float(success), success, truncated, self._info(success)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._render_camera(self._agent_cam)

    def close(self):
        """Free the renderer's GL context now (freeing it from a finaliser at interpreter exit can fail)."""
        renderer, self._renderer = self._renderer, None
        if renderer is not None:
            _LIVE_RENDERING_ENVS.discard(self)
            try:
                renderer.close()
            except Exception:  # noqa: BLE001 -- a dying GL context must not turn close() into an error
                # Drop the half-freed contexts so that the renderer's finaliser does not retry (and
                # print the same error again).
                renderer._gl_context = None
                renderer._mjr_context = None

    def __del__(self):
        # close() already swallows GL errors; this guards against a half-built env (failed __init__).
        if hasattr(self, "_renderer"):
            self.close()

    # -- the expert ---------------------------------------------------------------------------------
    def expert(self):
        """A scripted expert (policy API: reset(), select_action(obs)) acting on this env's state."""
        from vla_accel.envs.tabletop.expert import ScriptedExpert

        return ScriptedExpert(self)

    # -- internals ----------------------------------------------------------------------------------
    def _apply_init_state(self, index: int, split: str = "eval") -> None:
        rng = np.random.default_rng(init_state_seed(self.suite, self.task_id, index, split))
        layout = self.task.sample_layout(rng)
        home = GRIPPER_HOME + rng.uniform(-HOME_JITTER, HOME_JITTER, size=3)
        mujoco.mj_resetData(self.model, self.data)
        for spec in self.task.objects:
            x, y, yaw = layout.objects[spec.name]
            self.sim.set_pose(spec.name, np.array([x, y, spec.half_height]), yaw)
        for zone in self.task.zones:
            self.sim.set_zone(zone.name, *layout.zones[zone.name])
        for drawer in self.task.drawers:
            self.sim.set_drawer(drawer.name, *layout.drawers[drawer.name])
        self._target_pos = home
        self._target_quat = np.array([1.0, 0.0, 0.0, 0.0])
        self.sim.set_gripper(home, self._target_quat)
        self.sim.set_fingers(FINGER_OPEN)
        self.data.ctrl[:] = FINGER_OPEN
        mujoco.mj_forward(self.model, self.data)

    def _apply_action(self, a: np.ndarray) -> None:
        start_pos, start_quat = self._target_pos.copy(), self._target_quat.copy()
        target = np.clip(start_pos + a[:3] * POS_SCALE, WORKSPACE_LOW, WORKSPACE_HIGH)
        # Anti-windup: a blocked gripper (pressing on the table or an object) must not accumulate an
        # ever larger offset between the commanded target and where it really is.
        eef = self.sim.eef_pos
        self._target_pos = eef + np.clip(target - eef, -MAX_TARGET_LEAD, MAX_TARGET_LEAD)
        rotvec = a[3:6] * ROT_SCALE  # world-frame rotation of this step
        angle = float(np.linalg.norm(rotvec))
        delta = np.array([1.0, 0.0, 0.0, 0.0])
        if angle > 0:
            mujoco.mju_axisAngle2Quat(delta, rotvec / angle, angle)
        mujoco.mju_mulQuat(self._target_quat, delta, start_quat)
        mujoco.mju_normalize4(self._target_quat)
        self.data.ctrl[:] = FINGER_OPEN * (1.0 - a[6]) / 2.0

        mocap = self.sim.mocap_index
        n = self.n_substeps
        step_quat = np.empty(4)
        for k in range(1, n + 1):
            f = k / n
            self.data.mocap_pos[mocap] = start_pos + f * (self._target_pos - start_pos)
            if angle > 0:
                mujoco.mju_axisAngle2Quat(delta, rotvec / angle, angle * f)
                mujoco.mju_mulQuat(step_quat, delta, start_quat)
                self.data.mocap_quat[mocap] = step_quat
            else:
                self.data.mocap_quat[mocap] = start_quat
            mujoco.mj_step(self.model, self.data)

    def _state(self) -> np.ndarray:
        axis_angle = np.zeros(3)
        mujoco.mju_quat2Vel(axis_angle, self.sim.eef_quat, 1.0)
        return np.concatenate([self.sim.eef_pos, axis_angle, self.sim.finger_qpos]).astype(np.float32)

    def _observation(self) -> dict[str, Any]:
        return {
            "agentview_image": self._render_camera(self._agent_cam),
            "wrist_image": self._render_camera(self._wrist_cam),
            "state": self._state(),
            "instruction": self.instruction,
        }

    def _render_camera(self, camera_id: int) -> np.ndarray:
        if not self.render_images:
            return np.zeros((self.image_size, self.image_size, 3), np.uint8)
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            _track_renderer(self)
        self._renderer.update_scene(self.data, camera=camera_id)
        return self._renderer.render()

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": bool(success),
            "task": self.task.name,
            "task_id": self.task_id,
            "suite": self.suite,
            "init_state_id": self.init_state_id,
        }
