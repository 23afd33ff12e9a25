"""A small stand-in for the tabletop env (same spaces and info keys as docs/interfaces.md).

Task t of the fake suite succeeds once the summed x-action reaches `steps_to_success(t, init_state_id)`;
its expert always pushes x at +1, so with no noise the expert succeeds at exactly that step. Init states
listed in `FAILING_INIT_STATES` need more progress than the horizon allows: the expert fails there.
"""

from __future__ import annotations

from collections import namedtuple

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

FakeTaskInfo = namedtuple("FakeTaskInfo", "task_id name instruction max_steps")

N_TASKS = 3
MAX_STEPS = 12
FAILING_INIT_STATES = {3}  # the expert cannot make it from init state 3 within MAX_STEPS


def steps_to_success(task_id: int, init_state_id: int) -> int:
    if init_state_id in FAILING_INIT_STATES:
        return MAX_STEPS + 5
    return 3 + task_id + init_state_id % 2


def fake_list_tasks(suite: str) -> list[FakeTaskInfo]:
    from vla_accel.envs import check_suite

    check_suite(suite)
    return [FakeTaskInfo(t, f"{suite}_task_{t}", f"push the {suite} block {t} to the right", MAX_STEPS)
            for t in range(N_TASKS)]


class FakeExpert:
    """Scripted expert: reads the env's privileged progress, pushes +x, keeps the gripper open."""

    def __init__(self, env: "FakeTabletopEnv") -> None:
        self.env = env
        self.n_resets = 0

    def reset(self) -> None:
        self.n_resets += 1

    def select_action(self, obs: dict) -> np.ndarray:
        action = np.zeros(7, dtype=np.float32)
        action[0] = 1.0 if self.env.progress < self.env.target else 0.0
        action[6] = -1.0
        return action


class FakeTabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, suite: str = "spatial", task_id: int = 0, image_size: int = 16,
                 control_hz: float = 20.0, terminate_on_success: bool = True,
                 transient_success: bool = False) -> None:
        self.suite, self.task_id, self.image_size = suite, task_id, image_size
        self.terminate_on_success = terminate_on_success
        # transient_success: success holds only at the step the target is first reached (tests that
        # the rollout counts success "at any step", not only at the last one).
        self.transient_success = transient_success
        self.render_mode = "rgb_array"
        self.instruction = f"push the {suite} block {task_id} to the right"
        img = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = spaces.Dict({
            "agentview_image": img, "wrist_image": img,
            "state": spaces.Box(-np.inf, np.inf, (8,), np.float32),
            "instruction": spaces.Text(max_length=256),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.progress, self.target, self.n_steps, self.init_state_id = 0.0, 1.0, 0, 0
        self.closed = False
        self.actions_seen: list[np.ndarray] = []

    def expert(self) -> FakeExpert:
        return FakeExpert(self)

    def _obs(self) -> dict:
        shade = int(min(255, 20 * self.progress + 10 * self.init_state_id))
        agent = np.full((self.image_size, self.image_size, 3), shade, np.uint8)
        wrist = np.full((self.image_size, self.image_size, 3), 255 - shade, np.uint8)
        state = np.zeros(8, np.float32)
        state[0] = self.progress
        return {"agentview_image": agent, "wrist_image": wrist, "state": state,
                "instruction": self.instruction}

    def _info(self, success: bool) -> dict:
        return {"is_success": success, "task": f"{self.suite}_task_{self.task_id}",
                "task_id": self.task_id, "suite": self.suite, "init_state_id": self.init_state_id}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        if "init_state_id" in options:
            self.init_state_id = int(options["init_state_id"])
        else:
            self.init_state_id = int(self.np_random.integers(50))
        self.progress, self.n_steps = 0.0, 0
        self.target = float(steps_to_success(self.task_id, self.init_state_id))
        return self._obs(), self._info(False)

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise ValueError(f"bad action {action!r}")
        action = np.clip(action, -1.0, 1.0)
        self.actions_seen.append(action)
        before = self.progress
        self.progress += float(action[0])
        self.n_steps += 1
        reached = self.progress >= self.target - 1e-6
        success = reached and (not self.transient_success or before < self.target - 1e-6)
        terminated = bool(success and self.terminate_on_success)
        truncated = self.n_steps >= MAX_STEPS and not terminated
        return self._obs(), float(success), terminated, truncated, self._info(success)

    def render(self):
        return self._obs()["agentview_image"]

    def close(self) -> None:
        self.closed = True


def fake_make_env(suite: str, task_id: int, image_size: int = 16, control_hz: float = 20.0, **kw):
    from vla_accel.envs import check_suite

    check_suite(suite)
    return FakeTabletopEnv(suite, task_id, image_size=image_size, control_hz=control_hz, **kw)


@pytest.fixture
def fake_envs(monkeypatch):
    """Route vla_accel.envs.make_env / list_tasks to the fake env for the test's duration."""
    import vla_accel.envs as envs

    monkeypatch.setattr(envs, "make_env", fake_make_env)
    monkeypatch.setattr(envs, "list_tasks", fake_list_tasks)


def real_tabletop_available() -> bool:
    """True once the real tabletop env has landed (vla_accel.envs.tabletop.make_tabletop_env)."""
    try:
        from vla_accel.envs.tabletop import list_tasks, make_tabletop_env  # noqa: F401
    except ImportError:
        return False
    return True


needs_real_tabletop = pytest.mark.skipif(not real_tabletop_available(),
                                         reason="the real tabletop env (vla_accel.envs.tabletop) is not there yet")


def with_expert_defaults(overrides) -> list[str]:
    """`vla-accel eval` defaults to the shipped checkpoint on the goal suite; these tests run the scripted
    expert on spatial (at any image size) unless they name a policy or suite themselves."""
    named = {o.split("=", 1)[0] for o in overrides}
    return [*(["policy=expert"] if "policy" not in named else []),
            *(["env=spatial"] if "env" not in named else []), *overrides]


def compose_config(config_name: str, overrides: list[str]):
    """The app config `vla-accel <config_name> <overrides>` would run with (no Hydra run dir)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("vla_accel.conf", version_base=None):
        return compose(config_name, overrides=overrides)
