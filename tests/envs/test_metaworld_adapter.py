"""Meta-World adapter: interface conformance, init states, action mapping, upright frames, experts."""

from __future__ import annotations

import numpy as np
import pytest

from vla_accel.envs._metaworld_instructions import MT10_INSTRUCTIONS, instruction_for

pytestmark = pytest.mark.metaworld

mw = pytest.importorskip("metaworld", reason="Meta-World not installed: pip install -e .[metaworld]")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from vla_accel.envs import list_tasks, make_env  # noqa: E402
from vla_accel.envs._interface import INSTRUCTION_CHARSET  # noqa: E402
from vla_accel.envs.metaworld_adapter import (  # noqa: E402
    MT10_TASKS,
    UPSIDE_DOWN_CAMERAS,
    MetaWorldEnv,
    metaworld_to_ours,
)

DRAWER_OPEN = MT10_TASKS.index("drawer-open-v3")
REACH = MT10_TASKS.index("reach-v3")
IMAGE_SIZE = 64  # small frames keep the software renderer fast; nothing here depends on the size


@pytest.fixture(scope="module")
def env():
    e = make_env("metaworld", DRAWER_OPEN, image_size=IMAGE_SIZE)
    yield e
    e.close()


def _run(env, actions, init_state_id=0):
    """Reset to an init state, apply the actions, return the last observation."""
    obs, _ = env.reset(options={"init_state_id": init_state_id})
    for a in actions:
        obs, *_ = env.step(a)
    return obs


def test_list_tasks_are_the_mt10_tasks_with_instructions():
    tasks = list_tasks("metaworld")
    assert [t.name for t in tasks] == list(MT10_TASKS) == list(mw.env_dict.MT10_V3)
    assert [t.task_id for t in tasks] == list(range(10))
    for t in tasks:
        assert t.instruction == MT10_INSTRUCTIONS[t.name]
        assert set(t.instruction) <= INSTRUCTION_CHARSET
        assert 0 < t.max_steps <= 500


def test_instruction_fallback_for_names_outside_mt10():
    assert instruction_for("drawer-open-v3") == "open the drawer"
    assert instruction_for("faucet-open-v3") == "open the faucet"
    assert instruction_for("handle-press-side-v3") == "press the handle from the side"
    assert instruction_for("coffee-button-v3") == "coffee button"  # no verb: read as words


def test_passes_gymnasium_env_checker(env):
    check_env(env.unwrapped, skip_render_check=False)


def test_observation_layout(env):
    obs, info = env.reset(options={"init_state_id": 0})
    assert env.observation_space.contains(obs)
    assert obs["agentview_image"].shape == obs["wrist_image"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (8,)
    assert obs["instruction"] == env.unwrapped.instruction == "open the drawer"
    raw = env.unwrapped.raw_observation
    np.testing.assert_allclose(obs["state"][:3], raw[:3], atol=1e-6)  # hand position == Meta-World's obs[:3]
    assert info == {"is_success": False, "task": "drawer-open-v3", "task_id": DRAWER_OPEN,
                    "suite": "metaworld", "init_state_id": 0}  # fmt: skip
    assert np.array_equal(env.render(), obs["agentview_image"])


def test_same_init_state_gives_same_first_frame_and_different_ones_differ(env):
    first, _ = env.reset(options={"init_state_id": 7})
    _run(env, [env.action_space.sample() for _ in range(5)], init_state_id=3)  # play something else
    again, _ = env.reset(options={"init_state_id": 7})
    for key in ("agentview_image", "wrist_image", "state"):
        assert np.array_equal(first[key], again[key]), key
    raw7 = env.unwrapped.raw_observation.copy()
    env.reset(options={"init_state_id": 8})
    assert not np.allclose(raw7[4:7], env.unwrapped.raw_observation[4:7])  # the drawer moved


def test_init_state_drawn_from_the_seeded_rng_without_an_index(env):
    ids = []
    for _ in range(2):
        _, info = env.reset(seed=123)
        ids.append(info["init_state_id"])
    assert ids[0] == ids[1] and 0 <= ids[0] < 50


def test_bad_arguments_raise_value_errors(env):
    with pytest.raises(ValueError, match="0..9"):
        make_env("metaworld", 10)
    with pytest.raises(ValueError, match="0..49"):
        env.reset(options={"init_state_id": 50})
    env.reset(options={"init_state_id": 0})
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([0, 0, np.nan, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([0, 0, 0, 0, 0, 0, np.inf]))


def test_rotation_is_ignored_and_out_of_range_actions_are_clipped(env):
    plain = _run(env, [np.array([0.5, 0, 0, 0, 0, 0, 1], np.float32)] * 5)
    rotated = _run(env, [np.array([0.5, 0, 0, 1, -1, 1, 1], np.float32)] * 5)
    np.testing.assert_array_equal(plain["state"], rotated["state"])
    at_limit = _run(env, [np.array([1, 0, 0, 0, 0, 0, 1], np.float32)] * 5)
    beyond = _run(env, [np.array([7, 0, 0, 0, 0, 0, 3], np.float32)] * 5)
    np.testing.assert_array_equal(at_limit["state"], beyond["state"])


def test_translation_moves_the_hand_along_the_commanded_axis(env):
    start, _ = env.reset(options={"init_state_id": 0})
    for axis in range(3):
        for sign in (1.0, -1.0):
            action = np.zeros(7, np.float32)
            action[axis] = sign
            end = _run(env, [action] * 10)
            moved = end["state"][:3] - start["state"][:3]
            assert sign * moved[axis] > 0.02, (axis, sign, moved)  # ~1 cm per unit step, some lag
            assert abs(moved[axis]) > 3 * np.abs(np.delete(moved, axis)).max()


def test_gripper_sign_minus_one_opens_plus_one_closes(env):
    def finger_gap(obs):  # r_close grows and l_close shrinks as the fingers close
        return obs["state"][7] - obs["state"][6]

    closed = _run(env, [np.array([0, 0, 0, 0, 0, 0, 1], np.float32)] * 15)
    opened = _run(env, [np.array([0, 0, 0, 0, 0, 0, -1], np.float32)] * 15)
    assert finger_gap(closed) < finger_gap(opened) - 0.02


def test_metaworld_to_ours_places_gripper_last_and_zero_rotation():
    out = metaworld_to_ours(np.array([0.1, -0.2, 3.0, 1.0]))
    np.testing.assert_array_equal(out, np.array([0.1, -0.2, 1.0, 0, 0, 0, 1.0], np.float32))
    with pytest.raises(ValueError):
        metaworld_to_ours(np.zeros(7))


def test_upside_down_camera_list_matches_the_model(env):
    model, data = env.unwrapped._mw.model, env.unwrapped._mw.data
    for cam in range(model.ncam):
        if model.cam_mode[cam] != 0:  # only fixed cameras have a fixed "up"; the hand cameras move
            continue
        up_z = data.cam_xmat[cam].reshape(3, 3)[2, 1]  # world z of the camera's image-up axis
        assert (up_z < 0) == (model.camera(cam).name in UPSIDE_DOWN_CAMERAS), model.camera(cam).name


@pytest.mark.parametrize("camera", ["corner", "corner2"])
def test_fixed_camera_frames_are_upright_and_not_mirrored(camera):
    """Paint the gripper green, move it up and then to the viewer's right; its image must follow.

    Upright: world up is image up. Not mirrored: the viewer's right, forward x up, is image right.
    Only world geometry is used, so this checks the adapter's frame turning, not re-derives it.
    """
    e = MetaWorldEnv(REACH, image_size=128, agentview_camera=camera)  # no green objects in reach
    try:
        model, data = e._mw.model, e._mw.data
        gripper = {model.body(b).id for b in ("right_l6", "right_hand", "hand", "rightclaw", "leftclaw", "rightpad", "leftpad")}
        for g in range(model.ngeom):
            if model.geom_bodyid[g] in gripper:
                model.geom_matid[g], model.geom_rgba[g] = -1, (0, 1, 0, 1)

        def gripper_pixel(frame):  # (row, col) centroid of the pure-green pixels
            r, g, b = (frame[..., i].astype(int) for i in range(3))
            green = (g > 80) & (g > 2 * r) & (g > 2 * b)
            assert green.sum() > 10
            return np.argwhere(green).mean(axis=0)

        obs, _ = e.reset(options={"init_state_id": 0})
        start = gripper_pixel(obs["agentview_image"])
        up = _run(e, [np.array([0, 0, 1, 0, 0, 0, 0], np.float32)] * 15)
        assert gripper_pixel(up["agentview_image"])[0] < start[0] - 3  # moved up the picture

        forward = -data.cam_xmat[model.camera(camera).id].reshape(3, 3)[:, 2]
        right = np.cross(forward, [0, 0, 1])[:2]
        right /= np.linalg.norm(right)
        action = np.zeros(7, np.float32)
        action[:2] = right
        moved = _run(e, [action] * 15)
        assert gripper_pixel(moved["agentview_image"])[1] > start[1] + 3  # moved to the right
    finally:
        e.close()


@pytest.mark.parametrize("camera", ["corner", "behindGripper"])
def test_frames_are_upright_sky_above_table(camera):
    """Skybox off => empty space renders black. Upright, it fills the top rows, the table the bottom."""
    e = MetaWorldEnv(DRAWER_OPEN, image_size=IMAGE_SIZE, agentview_camera=camera)
    try:
        frame, _ = e.reset(options={"init_state_id": 0})
        frame = frame["agentview_image"].astype(float)
        rows = IMAGE_SIZE // 8
        assert frame[:rows].mean() + 20 < frame[-rows:].mean()
    finally:
        e.close()


@pytest.mark.parametrize("task_id", [REACH, DRAWER_OPEN])
def test_expert_solves_the_task(task_id):
    e = make_env("metaworld", task_id, image_size=32, render_images=False)  # the expert reads the sim state
    expert = e.unwrapped.expert()
    try:
        for init_state_id in (0, 1):
            obs, _ = e.reset(options={"init_state_id": init_state_id})
            expert.reset()
            for _ in range(e.unwrapped.max_steps):
                action = expert.select_action(obs)
                assert action.shape == (7,) and action.dtype == np.float32
                obs, reward, terminated, truncated, info = e.step(action)
                if terminated or truncated:
                    break
            assert not obs["agentview_image"].any() and obs["wrist_image"].shape == (32, 32, 3)
            assert terminated and info["is_success"] and reward == 1.0, (task_id, init_state_id)
    finally:
        e.close()


@pytest.mark.slow
def test_expert_success_on_all_mt10_tasks():
    from vla_accel.envs._metaworld_expert_eval import run_expert

    for task_id, name in enumerate(MT10_TASKS):
        result = run_expert(task_id, range(5))
        assert result["n_success"] >= 4, result


def test_env_config_matches_the_tabletop_keys_and_builds_the_native_rate_env():
    from importlib.resources import files

    from omegaconf import OmegaConf

    from vla_accel.harness.task_selection import env_kwargs

    conf = files("vla_accel.conf") / "env"
    cfg = OmegaConf.load(str(conf / "metaworld.yaml"))
    assert set(cfg) == set(OmegaConf.load(str(conf / "spatial.yaml")))
    assert cfg.suite == "metaworld" and cfg.task_ids is None
    e = make_env(cfg.suite, 0, **env_kwargs(cfg))
    try:
        assert e.unwrapped._mw.frame_skip == 5 and e.unwrapped.control_hz == pytest.approx(80.0)
    finally:
        e.close()


def test_other_control_rates_change_frame_skip_with_a_warning():
    with pytest.warns(UserWarning, match="80 Hz"):
        e = make_env("metaworld", REACH, image_size=IMAGE_SIZE, control_hz=20.0, render_images=False)
    try:
        assert e.unwrapped._mw.frame_skip == 20 and e.unwrapped.control_hz == pytest.approx(20.0)
        assert e.metadata["render_fps"] == 20
    finally:
        e.close()
    with pytest.raises(ValueError, match="control_hz"):
        make_env("metaworld", REACH, control_hz=1000.0)
