import h5py
import numpy as np
import pytest
from fixtures.fakes import (FAILING_INIT_STATES, N_TASKS, FakeTabletopEnv, compose_config,
                   fake_make_env, steps_to_success)

import vla_accel.envs as envs
from vla_accel.data import hdf5_io
from vla_accel.data.collect import collect, record_rollout
from vla_accel.data.hdf5_io import DemoFile, DemoFormatError, DemoWriter, load_demos
from vla_accel.policies.expert import make_expert_policy


def _collect_cfg(*overrides):
    return compose_config("collect", ["collect.progress=false", "env.image_size=16", *overrides])


# ---------------------------------------------------------------- one rollout


def test_clean_rollout_has_the_known_length_and_layout():
    env = FakeTabletopEnv("spatial", 2)
    demo = record_rollout(env, make_expert_policy(None, env), init_state_id=1, seed=0, noise_std=0.0,
                          rng=np.random.default_rng(0))
    t = steps_to_success(2, 1)
    assert demo["success"] and demo["actions"].shape == (t, 7)
    np.testing.assert_array_equal(demo["actions"], demo["executed_actions"])
    assert demo["agentview_image"].shape == (t, 16, 16, 3) and demo["state"].shape == (t, 8)
    assert demo["dones"].tolist() == [0] * (t - 1) + [1]
    assert demo["rewards"].tolist() == [0.0] * (t - 1) + [1.0]
    # obs[t] is what the label answered: the state before step t
    np.testing.assert_array_equal(demo["state"][:, 0], np.arange(t, dtype=np.float32))


def test_noisy_rollout_labels_are_the_clean_expert_actions():
    env = FakeTabletopEnv("spatial", 0)
    demo = record_rollout(env, make_expert_policy(None, env), init_state_id=0, seed=0, noise_std=0.3,
                          rng=np.random.default_rng(1))
    labels, executed = demo["actions"], demo["executed_actions"]
    assert set(np.unique(labels[:, 0])) <= {0.0, 1.0} and np.all(labels[:, 1:6] == 0) and np.all(labels[:, 6] == -1)
    assert not np.allclose(labels, executed)
    assert executed.min() >= -1.0 and executed.max() <= 1.0
    np.testing.assert_allclose(env.actions_seen, executed)  # what the env got is what was recorded
    # the x-action was at most +1 per step after clipping, so success can only come later than clean
    assert demo["success"] and len(labels) >= steps_to_success(0, 0)


# ---------------------------------------------------------------- collect to a file


def test_collect_keeps_successful_demos_in_the_interface_layout(fake_envs, tmp_path):
    (out,) = collect(_collect_cfg("collect.n_demos_per_task=4", "collect.noise_std=0.0"), tmp_path,
                     command="vla-accel collect test")
    assert out == tmp_path / "demos_spatial.hdf5"
    assert not list(tmp_path.glob(".*tmp*"))
    with DemoFile(out) as demos:
        n_ok = N_TASKS * (4 - len(FAILING_INIT_STATES))
        assert len(demos) == n_ok and demos.names[:2] == ["demo_0", "demo_1"]
        assert demos.attrs["suite"] == "spatial" and demos.attrs["command"] == "vla-accel collect test"
        assert demos.attrs["env_args"] == {"suite": "spatial", "task_ids": [0, 1, 2], "image_size": 16,
                                           "control_hz": 20.0}
        assert demos.attrs["total"] == sum(len(d) for d in demos)
        d = demos[0]
        assert d.attrs == {"num_samples": 3, "instruction": "push the spatial block 0 to the right",
                           "task": "spatial_task_0", "task_id": 0, "suite": "spatial", "init_state_id": 0,
                           "init_split": "train", "success": True, "noise_std": 0.0}
        assert [x.attrs["init_state_id"] for x in demos][:3] == [0, 1, 2]
        assert len(demos.sample_index()) == demos.attrs["total"]
    with h5py.File(out) as f:
        assert f["data/demo_0/obs/agentview_image"].compression == "gzip"
        assert f["data/demo_0/obs/agentview_image"].chunks == (1, 16, 16, 3)


def test_collect_keep_failures_marks_them(fake_envs, tmp_path):
    (out,) = collect(_collect_cfg("collect.n_demos_per_task=4", "collect.keep_failures=true",
                                  "env.task_ids=[1]", "collect.compression=lzf"), tmp_path)
    demos = load_demos(out)
    assert [d.success for d in demos] == [i not in FAILING_INIT_STATES for i in range(4)]
    assert len(load_demos(out, only_success=True)) == 3


def test_collect_one_file_per_suite(fake_envs, tmp_path):
    outs = collect(_collect_cfg("env.suite=[goal,long]", "env.task_ids=[0]", "collect.n_demos_per_task=1",
                                "collect.output='sub/{suite}.h5'"), tmp_path)
    assert outs == [tmp_path / "sub/goal.h5", tmp_path / "sub/long.h5"]
    assert [load_demos(p)[0].attrs["suite"] for p in outs] == ["goal", "long"]


def test_an_existing_file_is_kept_unless_overwrite(fake_envs, tmp_path):
    out = tmp_path / "demos_spatial.hdf5"
    out.write_bytes(b"precious")
    cfg = _collect_cfg("collect.n_demos_per_task=1", "env.task_ids=[0]")
    with pytest.raises(FileExistsError, match="collect.overwrite=true"):
        collect(cfg, tmp_path)
    assert out.read_bytes() == b"precious"
    collect(_collect_cfg("collect.n_demos_per_task=1", "env.task_ids=[0]", "collect.overwrite=true"), tmp_path)
    assert len(load_demos(out)) == 1


def _env_that_fails_at(step_no: int, exc: BaseException):
    calls = {"n": 0}

    def make(suite, task_id, **kw):
        env = fake_make_env(suite, task_id, **kw)
        inner = env.step

        def step(action):
            calls["n"] += 1
            if calls["n"] == step_no:
                raise exc
            return inner(action)

        env.step = step
        return env

    return make


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_a_failed_run_leaves_no_partial_file_and_the_old_one_intact(fake_envs, tmp_path, monkeypatch, exc):
    out = tmp_path / "demos_spatial.hdf5"
    out.write_bytes(b"old data")
    monkeypatch.setattr(envs, "make_env", _env_that_fails_at(20, exc))
    with pytest.raises(type(exc)):
        collect(_collect_cfg("collect.n_demos_per_task=4", "collect.overwrite=true"), tmp_path)
    assert out.read_bytes() == b"old data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos_spatial.hdf5"]


def test_a_disk_error_while_writing_exits_non_zero_via_cli(fake_envs, tmp_path, monkeypatch, capsys):
    from vla_accel.cli import main

    real_add = DemoWriter.add_demo
    calls = {"n": 0}

    def add_demo(self, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_add(self, **kw)

    monkeypatch.setattr(DemoWriter, "add_demo", add_demo)
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", f"hydra.run.dir={tmp_path}", "collect.n_demos_per_task=3", "collect.progress=false",
              "env.image_size=16"])
    assert exit_info.value.code == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.hdf5")) and not list(tmp_path.glob(".*.tmp-*"))


def test_no_successful_demo_is_an_error_not_an_empty_file(fake_envs, tmp_path):
    from vla_accel.data.collect import NoDemosError

    with pytest.raises(NoDemosError, match="keep_failures"):
        collect(_collect_cfg("collect.n_demos_per_task=1", "collect.max_steps=1"), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- reading and validation


def _write_one(path, t=4, **overrides):
    arrays = dict(agentview_image=np.zeros((t, 8, 8, 3), np.uint8), wrist_image=np.zeros((t, 8, 8, 3), np.uint8),
                  state=np.zeros((t, 8), np.float32), actions=np.zeros((t, 7), np.float32),
                  executed_actions=np.zeros((t, 7), np.float32), rewards=np.zeros(t, np.float32),
                  dones=np.zeros(t, np.uint8))
    arrays.update(overrides)
    with DemoWriter(path, suite="spatial", env_args={}) as w:
        w.add_demo(**arrays, instruction="i", task="t", task_id=0, suite="spatial", init_state_id=0,
                   success=True, noise_std=0.0)
        w.commit()
    return path


def test_writer_rejects_arrays_off_the_layout(tmp_path):
    with pytest.raises(DemoFormatError, match=r"state has shape \(4, 7\), expected \(T, 8\)"):
        _write_one(tmp_path / "a.hdf5", state=np.zeros((4, 7)))
    with pytest.raises(DemoFormatError, match="rewards has 3 steps, but actions has 4"):
        _write_one(tmp_path / "b.hdf5", rewards=np.zeros(3))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="valid: gzip, lzf, none"):
        DemoWriter(tmp_path / "c.hdf5", suite="s", env_args={}, compression="zstd")


@pytest.mark.parametrize("damage,match", [
    (lambda f: f["data/demo_0/obs"].__delitem__("wrist_image"), "data/demo_0 has no dataset obs/wrist_image"),
    (lambda f: f["data/demo_0"].attrs.__delitem__("success"),
     r"missing attributes \['success'\]"),
    (lambda f: f["data"].attrs.__setitem__("total", 99), "total'\\]=99 but demos hold 4"),
    (lambda f: (f["data/demo_0"].__delitem__("actions"),
                f["data/demo_0"].create_dataset("actions", data=np.zeros((4, 6), np.float32))),
     r"actions has shape \(4, 6\), expected \(T, 7\)"),
    (lambda f: f["data"].create_group("mask"), r"unexpected entries under data/: \['mask'\]"),
    (lambda f: f.__delitem__("data"), "no 'data' group"),
])
def test_reader_names_what_is_wrong(tmp_path, damage, match):
    path = _write_one(tmp_path / "d.hdf5")
    with h5py.File(path, "a") as f:
        damage(f)
    with pytest.raises(DemoFormatError, match=match):
        load_demos(path)


def test_reader_on_a_non_hdf5_file(tmp_path):
    (tmp_path / "x.hdf5").write_text("not hdf5")
    with pytest.raises(DemoFormatError, match="not a readable HDF5 file"):
        load_demos(tmp_path / "x.hdf5")
    with pytest.raises(FileNotFoundError):
        load_demos(tmp_path / "missing.hdf5")


def test_module_exports_the_layout_constants():
    assert hdf5_io.DEMO_ATTRS == ("num_samples", "instruction", "task", "task_id", "suite", "init_state_id",
                                  "success", "noise_std")
