"""Meta-World v3 (MT10 tasks) behind vla-accel's environment interface (docs/interfaces.md).

What the adapter maps, and how:
- Tasks: the ten MT10 tasks of Meta-World v3, `task_id` = index in `MT10_TASKS`.
- Init states: Meta-World's own goal/object sampling. `metaworld.MT1(name, seed=INIT_STATE_SEED)` draws
  50 tasks (random vectors of object/goal positions) per environment; `init_state_id` i sets task i, so
  the same index gives the same scene and the same first frame.
- Observation:
  - `agentview_image`: the fixed camera `"corner"` (Meta-World's usual third-person view; any camera of
    the model can be chosen with `agentview_camera=`). The corner cameras are defined rolled upside down
    in Meta-World's XML (their up axis points down in the world), so their frames are turned 180 degrees.
  - `wrist_image`: Meta-World's gripper camera `"gripperPOV"` (tracks the hand; rendered as is).
  - `state` (8,): hand position (Meta-World's own `obs[:3]`, the "hand" body, metres, world frame),
    the hand's measured orientation as axis-angle (robosuite convention; Meta-World holds the mocap at
    a fixed orientation, so this barely changes), and the two finger joint positions (r_close, l_close).
  - `instruction`: hand-written per MT10 task (see `_metaworld_instructions.py`).
- Action: ours [dx, dy, dz, droll, dpitch, dyaw, g] -> Meta-World's [dx, dy, dz, g]. Rotations are
  IGNORED (Meta-World's Sawyer keeps a fixed gripper orientation). dx = 1 moves the mocap 1 cm (Meta-World's
  `action_scale`). Gripper sign is the same in both (-1 open, +1 close: Meta-World drives the fingers
  with [g, -g], and its scripted experts close with +1), so g passes through unchanged.
- Success: Meta-World's `info["success"]`.
- Control rate: native 80 Hz (frame_skip 5 x 2.5 ms). `control_hz` other than that changes
  `frame_skip` to round(1 / (control_hz * timestep)) with a warning; the rate actually used is
  `env.unwrapped.control_hz`. The scripted experts are tuned for 80 Hz: at 20 Hz push-v3 and
  peg-insert-side-v3 fail every episode, door-open drops to 8/10 (measured with
  `python -m vla_accel.envs._metaworld_expert_eval --episodes 10 --control-hz 20`).
- `env.unwrapped.expert()`: Meta-World's scripted policy for the task, fed the raw 39-D observation the
  adapter keeps from the last reset/step, its 4-D output mapped to our 7-D action.
"""

from __future__ import annotations

import functools
import warnings

import gymnasium as gym
import numpy as np

from vla_accel.envs._geometry import quat_wxyz_to_xyzw, quat_xyzw_to_axis_angle
from vla_accel.envs._interface import (
    check_image_size,
    check_init_state_id,
    check_instruction,
    check_task_id,
    make_action_space,
    make_observation_space,
    validate_action,
)
from vla_accel.envs._metaworld_instructions import instruction_for
from vla_accel.envs.task_info import TaskInfo

SUITE = "metaworld"
MT10_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
NUM_INIT_STATES = 50
INIT_STATE_SEED = 0
AGENTVIEW_CAMERA = "corner"
WRIST_CAMERA = "gripperPOV"
# Fixed cameras whose XML frame is rolled half a turn (measured up axes, world z: corner -0.96,
# corner2 -0.87, corner3 -0.53, corner4 -0.87); tests/envs/test_metaworld_adapter.py checks this list.
UPSIDE_DOWN_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})
# Step limits: twice the most steps Meta-World's scripted expert needed to succeed over the 50 init
# states, rounded up to 50, capped at Meta-World's max path length 500. Measured (2026-11-22) with
#   python -m vla_accel.envs._metaworld_expert_eval --episodes 50 --max-steps 500
# most expert steps -> limit: reach 78 -> 200, push 74 -> 150, pick-place 61 -> 150, door-open 122 -> 250,
# drawer-open 92 -> 200, drawer-close 79 -> 200, button-press-topdown 75 -> 150, peg-insert-side 240 ->
# 500, window-open 96 -> 200, window-close 88 -> 200.
MAX_PATH_LENGTH = 500
MAX_STEPS: dict[str, int] = {
    "reach-v3": 200,
    "push-v3": 150,
    "pick-place-v3": 150,
    "door-open-v3": 250,
    "drawer-open-v3": 200,
    "drawer-close-v3": 200,
    "button-press-topdown-v3": 150,
    "peg-insert-side-v3": 500,
    "window-open-v3": 200,
    "window-close-v3": 200,
}
_INSTALL_HINT = "Meta-World is an optional extra: pip install -e .[metaworld]"


def _import_metaworld():
    try:
        import metaworld
        import metaworld.policies
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    return metaworld


def list_tasks(suite: str = SUITE) -> list[TaskInfo]:
    if suite != SUITE:
        raise ValueError(f"the Meta-World adapter serves suite {SUITE!r} only, got {suite!r}")
    return [TaskInfo(i, name, instruction_for(name), MAX_STEPS[name]) for i, name in enumerate(MT10_TASKS)]


@functools.lru_cache(maxsize=len(MT10_TASKS))
def _init_tasks(task_name: str) -> tuple:
    """The 50 seeded Meta-World `Task`s (pickled object/goal random vectors) of one environment."""
    metaworld = _import_metaworld()
    return tuple(metaworld.MT1(task_name, seed=INIT_STATE_SEED).train_tasks)


class MetaWorldEnv(gym.Env):
    """One MT10 task of Meta-World v3 with vla-accel's observation/action interface."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task_id: int,
        image_size: int = 128,
        control_hz: float | None = None,
        max_steps: int | None = None,
        agentview_camera: str = AGENTVIEW_CAMERA,
        wrist_camera: str = WRIST_CAMERA,
        render_mode: str | None = "rgb_array",
        render_images: bool = True,
    ):
        """`render_images=False` skips both cameras (observation images are all zeros), for runs that
        only need the simulator, such as measuring the scripted experts."""
        metaworld = _import_metaworld()
        from vla_accel.envs._mujoco_cameras import CameraRenderer

        self.task_id = check_task_id(task_id, len(MT10_TASKS), SUITE)
        self.task_name = MT10_TASKS[self.task_id]
        self.instruction = check_instruction(instruction_for(self.task_name))
        self.image_size = check_image_size(image_size)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.render_images = bool(render_images)
        self.max_steps = MAX_STEPS[self.task_name] if max_steps is None else int(max_steps)
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {max_steps}")

        self._init_tasks = _init_tasks(self.task_name)
        self._mw = metaworld.env_dict.ALL_V3_ENVIRONMENTS[self.task_name](render_mode=None)
        self._mw.set_task(self._init_tasks[0])  # a task must be set before anything else
        self._mw.max_path_length = self.max_steps  # Meta-World refuses steps past its own limit

        self.control_hz = self._set_control_rate(control_hz)
        self.metadata = {**self.metadata, "render_fps": int(round(self.control_hz))}

        self._cameras = CameraRenderer(self._mw.model, self.image_size, UPSIDE_DOWN_CAMERAS)
        self.agentview_camera = self._cameras.check_camera(agentview_camera)
        self.wrist_camera = self._cameras.check_camera(wrist_camera)
        model = self._mw.model
        self._finger_qpos_idx = [int(model.joint(j).qposadr[0]) for j in ("r_close", "l_close")]

        self.observation_space = make_observation_space(self.image_size)
        self.action_space = make_action_space()
        self.init_state_id: int | None = None
        self.raw_observation: np.ndarray | None = None  # Meta-World's flat (39,) obs, for the expert
        self._steps = 0
        self._last_frame: np.ndarray | None = None

    def _set_control_rate(self, control_hz: float | None) -> float:
        """Meta-World's frame skip for ``control_hz`` (None: its native 80 Hz); the rate it gives."""
        timestep = float(self._mw.model.opt.timestep)
        if control_hz is not None:
            frame_skip = round(1.0 / (float(control_hz) * timestep)) if control_hz > 0 else 0
            if frame_skip < 1:
                self._mw.close()
                raise ValueError(f"control_hz must be in (0, {1 / timestep:.0f}] Hz, got {control_hz}")
            if frame_skip != self._mw.frame_skip:
                warnings.warn(
                    f"Meta-World at control_hz={control_hz} (frame_skip {frame_skip}, native 5 = 80 Hz): its "
                    "scripted experts are tuned for 80 Hz (at 20 Hz push and peg-insert-side fail)",
                    stacklevel=3,
                )
            self._mw.frame_skip = frame_skip
        return 1.0 / (self._mw.frame_skip * timestep)

    # -- gymnasium API -------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"init_state_id"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; valid: ['init_state_id']")
        if options.get("init_state_id") is None:
            init_state_id = int(self.np_random.integers(NUM_INIT_STATES))
        else:
            init_state_id = check_init_state_id(options["init_state_id"], NUM_INIT_STATES)
        self.init_state_id = init_state_id
        self._mw.set_task(self._init_tasks[init_state_id])
        raw, _ = self._mw.reset()
        self.raw_observation = np.asarray(raw, dtype=np.float64)
        self._steps = 0
        return self._observation(), self._info(success=False)

    def step(self, action):
        if self.raw_observation is None:
            raise RuntimeError("call reset() before step()")
        a = validate_action(action)  # (7,) float32 in [-1, 1]
        mw_action = np.array([a[0], a[1], a[2], a[6]], dtype=np.float32)  # rotation dropped
        raw, _, _, _, mw_info = self._mw.step(mw_action)
        self.raw_observation = np.asarray(raw, dtype=np.float64)
        self._steps += 1
        success = bool(mw_info["success"])
        truncated = self._steps >= self.max_steps and not success
        return self._observation(), float(success), success, truncated, self._info(success)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._last_frame is None:
            self._last_frame = self._render(self.agentview_camera)
        return self._last_frame

    def close(self):
        if getattr(self, "_cameras", None) is not None:
            self._cameras.close()
            self._cameras = None
        if getattr(self, "_mw", None) is not None:
            self._mw.close()
            self._mw = None

    # -- vla-accel extras ----------------------------------------------------------------------------
    def expert(self) -> MetaWorldExpert:
        return MetaWorldExpert(self)

    def _observation(self) -> dict:
        data = self._mw.data
        hand = data.body("hand")
        state = np.concatenate(
            [
                hand.xpos,  # (3,) == Meta-World's obs[:3]
                quat_xyzw_to_axis_angle(quat_wxyz_to_xyzw(hand.xquat)),  # (3,)
                data.qpos[self._finger_qpos_idx],  # (2,) r_close, l_close
            ]
        ).astype(np.float32)
        self._last_frame = agentview = self._render(self.agentview_camera)
        return {
            "agentview_image": agentview,
            "wrist_image": self._render(self.wrist_camera),
            "state": state,
            "instruction": self.instruction,
        }

    def _render(self, camera: str) -> np.ndarray:
        if not self.render_images:
            return np.zeros((self.image_size, self.image_size, 3), np.uint8)
        return self._cameras.render(self._mw.data, camera)

    def _info(self, success: bool) -> dict:
        return {
            "is_success": success,
            "task": self.task_name,
            "task_id": self.task_id,
            "suite": SUITE,
            "init_state_id": self.init_state_id,
        }


def metaworld_to_ours(action4: np.ndarray) -> np.ndarray:
    """Meta-World [dx, dy, dz, g] -> ours [dx, dy, dz, 0, 0, 0, g] (float32, clipped to [-1, 1] as the
    simulator itself would clip it; same gripper sign)."""
    a = np.asarray(action4, dtype=np.float32).reshape(-1)
    if a.shape != (4,):
        raise ValueError(f"Meta-World actions have shape (4,), got {a.shape}")
    out = np.zeros(7, dtype=np.float32)
    out[:3] = a[:3]
    out[6] = a[3]
    return np.clip(out, -1.0, 1.0)


class MetaWorldExpert:
    """Meta-World's own scripted policy for the env's task, with the policy API (reset/select_action).

    It reads the privileged flat observation (object and goal positions) the env keeps in
    `raw_observation`, so it only works for the env it was made from.
    """

    def __init__(self, env: MetaWorldEnv):
        metaworld = _import_metaworld()
        self._env = env
        self._policy = metaworld.policies.ENV_POLICY_MAP[env.task_name]()

    def reset(self) -> None:
        """Meta-World's scripted policies are stateless: nothing to clear."""

    def select_action(self, obs: dict | None = None) -> np.ndarray:
        """(7,) float32 for the env's current state (`obs` is accepted for the policy API, not read)."""
        raw = self._env.raw_observation
        if raw is None:
            raise RuntimeError("reset the environment before asking its expert for an action")
        with warnings.catch_warnings():
            # The policies' proportional gains exceed 1 on purpose; Meta-World clips (as do we).
            warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
            return metaworld_to_ours(self._policy.get_action(raw))

    def predict_action_chunk(self, obs: dict | None = None) -> np.ndarray:
        """(1, 1, 7): the expert sees only its own env, so a batch is always that one env."""
        return self.select_action(obs)[None, None]


def make_metaworld_env(suite: str, task_id: int, **kwargs) -> MetaWorldEnv:
    if suite != SUITE:
        raise ValueError(f"the Meta-World adapter serves suite {SUITE!r} only, got {suite!r}")
    return MetaWorldEnv(task_id, **kwargs)


__all__ = [
    "MT10_TASKS",
    "MetaWorldEnv",
    "MetaWorldExpert",
    "list_tasks",
    "make_metaworld_env",
    "metaworld_to_ours",
]
