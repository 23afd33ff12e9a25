"""The tabletop env against docs/interfaces.md: spaces, gymnasium's checker, init states, bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from vla_accel.envs import list_tasks, make_env
from vla_accel.envs.tabletop import GYM_ID, SUITES, TabletopEnv, make_tabletop_env
from vla_accel.envs.tabletop.env import POS_SCALE
from vla_accel.envs.tabletop.scene import WORKSPACE_HIGH, WORKSPACE_LOW


@pytest.fixture
def env():
    e = make_env("goal", 0)
    yield e
    e.close()


@pytest.mark.parametrize("suite", SUITES)
def test_check_env_passes_on_every_suite(suite):
    env = make_env(suite, 3)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env, skip_render_check=True)
        assert not [str(w.message) for w in caught if "gymnasium" in str(w.filename)]
    finally:
        env.close()


@pytest.mark.parametrize("suite", SUITES)
def test_list_tasks_gives_ten_tasks_with_instruction_and_budget(suite):
    tasks = list_tasks(suite)
    assert [t.task_id for t in tasks] == list(range(10))
    assert len({t.instruction for t in tasks}) == 10
    for t in tasks:
        assert t.name and t.instruction and t.max_steps >= 50
        assert tuple(t) == (t.task_id, t.name, t.instruction, t.max_steps)


def test_observation_layout_and_containment(env):
    obs, info = env.reset(options={"init_state_id": 0})
    assert set(obs) == {"agentview_image", "wrist_image", "state", "instruction"}
    for key in ("agentview_image", "wrist_image"):
        assert obs[key].shape == (128, 128, 3) and obs[key].dtype == np.uint8
        assert obs[key].std() > 5  # a real picture, not a blank frame
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
    assert obs["instruction"] == env.unwrapped.instruction == "put the red cube in the bowl"
    assert env.observation_space.contains(obs)
    assert set(info) >= {"is_success", "task", "task_id", "suite", "init_state_id"}
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs, reward, terminated, _, info = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
        assert env.observation_space.contains(obs)
        assert reward in (0.0, 1.0) and info["is_success"] == terminated == (reward == 1.0)
        assert info["suite"] == "goal" and info["task_id"] == 0 and info["init_state_id"] == 0


def test_images_are_upright_table_below_background(env):
    obs, _ = env.reset(options={"init_state_id": 0})
    img = obs["agentview_image"].astype(float)
    # The camera looks down at the table from above its front edge: the table (brown, red > blue)
    # fills the lower part of the picture, the dark background the top rows.
    top, bottom = img[:8].mean(axis=(0, 1)), img[-30:-10].mean(axis=(0, 1))
    assert bottom.sum() > top.sum() + 60
    assert bottom[0] > bottom[2] + 30


def test_image_size_option_and_render():
    env = make_tabletop_env("spatial", 0, image_size=224)
    try:
        obs, _ = env.reset(options={"init_state_id": 1})
        assert obs["agentview_image"].shape == obs["wrist_image"].shape == (224, 224, 3)
        np.testing.assert_array_equal(env.render(), obs["agentview_image"])
    finally:
        env.close()


def test_same_init_state_gives_identical_first_frame_and_state():
    a, b = make_env("object", 4), make_env("object", 4)
    try:
        oa, _ = a.reset(options={"init_state_id": 7})
        ob, _ = b.reset(seed=123, options={"init_state_id": 7})
        for key in ("agentview_image", "wrist_image", "state"):
            np.testing.assert_array_equal(oa[key], ob[key])
        np.testing.assert_array_equal(a.unwrapped.data.qpos, b.unwrapped.data.qpos)
        # ...and again after other episodes on the same env.
        a.reset(options={"init_state_id": 3})
        oa2, _ = a.reset(options={"init_state_id": 7})
        np.testing.assert_array_equal(oa2["agentview_image"], oa["agentview_image"])
    finally:
        a.close()
        b.close()


def test_different_init_states_give_different_scenes():
    env = make_env("spatial", 2)
    try:
        qpos, frames = [], []
        for i in range(5):
            obs, _ = env.reset(options={"init_state_id": i})
            qpos.append(env.unwrapped.data.qpos.copy())
            frames.append(obs["agentview_image"])
        for i in range(5):
            for j in range(i + 1, 5):
                assert np.abs(qpos[i] - qpos[j]).max() > 0.01
                assert not np.array_equal(frames[i], frames[j])
    finally:
        env.close()


@pytest.mark.parametrize(("suite", "task_id"), [("goal", 5), ("object", 2), ("spatial", 7), ("long", 9)])
def test_every_suite_keeps_one_arrangement_per_task_up_to_jitter(suite, task_id):
    env = make_env(suite, task_id)
    try:
        positions = []
        for i in range(10):
            env.reset(options={"init_state_id": i})
            positions.append(np.array([env.unwrapped.sim.pos(n)[:2] for n in env.unwrapped.sim.specs]))
        spread = np.ptp(np.stack(positions), axis=0)
        assert spread.max() <= 0.03 + 1e-9 and spread.max() > 0.005
    finally:
        env.close()


def test_reset_without_init_state_id_draws_from_seeded_rng(env):
    _, info_a = env.reset(seed=5)
    _, info_b = env.reset(seed=5)
    assert info_a["init_state_id"] == info_b["init_state_id"]
    ids = {env.reset()[1]["init_state_id"] for _ in range(20)}
    assert len(ids) > 1


@pytest.mark.parametrize(
    "action, match",
    [
        (np.zeros(6), r"shape \(7,\)"),
        (np.zeros((1, 7)), r"shape \(7,\)"),
        (np.array([0, 0, np.nan, 0, 0, 0, 0]), "NaN or inf"),
        (np.array([0, 0, 0, np.inf, 0, 0, 0]), "NaN or inf"),
    ],
)
def test_bad_actions_raise(env, action, match):
    env.reset(options={"init_state_id": 0})
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_step_before_reset_raises():
    env = make_env("goal", 0)
    try:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(7))
    finally:
        env.close()


def test_unknown_suite_and_task_out_of_range():
    with pytest.raises(ValueError, match="spatial"):
        make_env("spatiall", 0)
    with pytest.raises(ValueError, match="spatial, object, goal, long"):
        make_tabletop_env("kitchen", 0)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        make_env("long", 10)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        make_env("long", -1)


@pytest.mark.parametrize("bad", [50, -1, 2.5, "3"])
def test_init_state_id_out_of_range(env, bad):
    with pytest.raises(ValueError, match=r"0\.\.49"):
        env.reset(options={"init_state_id": bad})


def test_unknown_reset_option(env):
    with pytest.raises(ValueError, match="init_state_id"):
        env.reset(options={"init_state": 1})


def test_out_of_range_actions_are_clipped():
    a, b = make_env("goal", 0), make_env("goal", 0)
    try:
        a.reset(options={"init_state_id": 0})
        b.reset(options={"init_state_id": 0})
        big = np.array([5.0, -3.0, 2.0, 0.0, 0.0, 9.0, -4.0])
        oa = a.step(big)[0]
        ob = b.step(np.clip(big, -1, 1))[0]
        np.testing.assert_array_equal(oa["state"], ob["state"])
        np.testing.assert_array_equal(oa["agentview_image"], ob["agentview_image"])
    finally:
        a.close()
        b.close()


def test_action_moves_the_gripper_by_the_documented_scale(env):
    obs, _ = env.reset(options={"init_state_id": 0})
    start = obs["state"][:3].copy()
    for _ in range(5):
        obs = env.step(np.array([1.0, 0, 0, 0, 0, 0, -1.0]))[0]
    # The gripper follows its target through a stiff but soft weld: it trails by a few mm while
    # moving at full speed and settles on the target within a couple of steps.
    assert 4 * POS_SCALE < obs["state"][0] - start[0] <= 5 * POS_SCALE + 0.001
    for _ in range(3):
        obs = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))[0]
    np.testing.assert_allclose(obs["state"][0] - start[0], 5 * POS_SCALE, atol=0.002)
    np.testing.assert_allclose(obs["state"][1:3], start[1:3], atol=0.004)
    # Closing the gripper brings both fingers (state[6:8]) from open (0.04) to near 0.
    for _ in range(5):
        obs = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))[0]
    assert np.all(obs["state"][6:8] < 0.005)


def test_yaw_action_rotates_about_vertical(env):
    env.reset(options={"init_state_id": 0})
    for _ in range(3):
        obs = env.step(np.array([0, 0, 0, 0, 0, 1.0, -1.0]))[0]
    for _ in range(2):  # let the gripper settle on its target orientation
        obs = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))[0]
    np.testing.assert_allclose(obs["state"][3:6], [0, 0, 0.3], atol=0.01)


def test_gripper_stays_in_workspace(env):
    env.reset(options={"init_state_id": 0})
    for direction in np.eye(3):
        for sign in (1, -1):
            for _ in range(40):
                obs = env.step(np.array([*(sign * direction), 0, 0, 0, -1.0]))[0]
            eef = obs["state"][:3]
            assert np.all(eef >= WORKSPACE_LOW - 0.005) and np.all(eef <= WORKSPACE_HIGH + 0.005)


def test_truncation_at_max_steps():
    env = make_env("goal", 6)
    try:
        env.reset(options={"init_state_id": 0})
        for k in range(env.unwrapped.max_steps):
            _, _, terminated, truncated, _ = env.step(np.zeros(7))
            assert not terminated
            assert truncated == (k == env.unwrapped.max_steps - 1)
    finally:
        env.close()


def test_gym_registration_builds_the_env():
    env = gym.make(GYM_ID, suite="long", task_id=1, image_size=64)
    try:
        assert isinstance(env.unwrapped, TabletopEnv)
        obs, _ = env.reset(seed=0)
        assert obs["agentview_image"].shape == (64, 64, 3)
    finally:
        env.close()


def test_make_env_returns_plain_env_and_close_is_idempotent():
    env = make_env("object", 0)
    assert type(env) is TabletopEnv
    env.reset(options={"init_state_id": 0})
    env.close()
    env.close()


@pytest.mark.parametrize("kw", [{"image_size": 8}, {"image_size": 1000}, {"control_hz": 0}, {"render_mode": "human"}])
def test_bad_constructor_arguments(kw):
    with pytest.raises(ValueError):
        make_tabletop_env("goal", 0, **kw)


def test_control_hz_sets_substeps():
    env = make_tabletop_env("goal", 0, control_hz=10.0, render_images=False)
    try:
        assert env.n_substeps == 20
        env.reset(options={"init_state_id": 0})
        t0 = env.data.time
        env.step(np.zeros(7))
        assert env.data.time - t0 == pytest.approx(0.1)
    finally:
        env.close()


def test_no_gl_errors_at_interpreter_exit_without_close():
    """Envs left open (or dropped without close) must not spray EGL errors when Python exits."""
    import subprocess
    import sys

    script = (
        "from vla_accel.envs import make_env\n"
        "kept = [make_env('goal', i) for i in range(2)]\n"
        "for e in kept: e.reset(options={'init_state_id': 0})\n"
        "dropped = make_env('spatial', 0); dropped.reset(); del dropped\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr and "EGLError" not in result.stderr, result.stderr


def test_train_split_layouts_are_reproducible_and_disjoint_from_eval_init_states():
    from vla_accel.envs import make_env

    env = make_env("object", 0)
    try:
        eval_states = []
        for i in range(NUM_EVAL_STATES_CHECKED):
            env.reset(options={"init_state_id": i})
            eval_states.append(env.unwrapped.data.qpos.copy())
        train_a, _ = env.reset(options={"init_state_id": 3, "split": "train"})
        qpos_a = env.unwrapped.data.qpos.copy()
        train_b, _ = env.reset(options={"init_state_id": 3, "split": "train"})
        assert np.array_equal(train_a["agentview_image"], train_b["agentview_image"])
        assert not any(np.allclose(qpos_a, q) for q in eval_states)
        # the training stream is unbounded; the eval set is not
        env.reset(options={"init_state_id": 10_000, "split": "train"})
        with pytest.raises(ValueError, match="split"):
            env.reset(options={"init_state_id": 0, "split": "test"})
        with pytest.raises(ValueError, match="0..49"):
            env.reset(options={"init_state_id": 50})
    finally:
        env.close()


NUM_EVAL_STATES_CHECKED = 50
