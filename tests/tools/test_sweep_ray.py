"""`sweep.launcher=ray` without Ray: the settings, the jobs it hands the dispatcher (their folders are
the Hydra launchers' layout), and a failed job's eval.log. The real cluster: test_ray_cluster.py (slow)."""

import pytest

from vla_accel.tools.sweep import ray_sweep
from vla_accel.tools.sweep import run as sweep_run
from vla_accel.tools.sweep.spec import SweepSpec


def spec(**kw):
    return SweepSpec(**{"methods": ("fastv", "vla_cache"), "keep_ratios": (0.5,), "launcher": "ray", **kw})


def test_ray_address_is_the_same_as_ray_address_key():
    assert spec(ray_address="head:6379").ray["address"] == "head:6379"
    assert spec(ray={"address": "head:6379", "num_gpus": 0.5}).ray["num_gpus"] == 0.5
    with pytest.raises(ValueError, match="differ"):
        spec(ray_address="a:1", ray={"address": "b:2"})
    with pytest.raises(ValueError, match="sweep.ray"):
        spec(ray={"adress": "x"})
    with pytest.raises(ValueError, match="num_gpus"):
        spec(ray={"num_gpus": -1})


def test_composed_sweep_config_takes_ray_keys(tmp_path):
    s, _ = sweep_run.compose_sweep(["sweep.launcher=ray", "sweep.ray.address=auto", "sweep.ray.num_gpus=1",
                                    "+sweep.ray.env_vars.OMP_NUM_THREADS=1"])
    assert s.ray["address"] == "auto" and s.ray["num_gpus"] == 1.0 and s.ray["env_vars"] == {"OMP_NUM_THREADS": "1"}
    assert ray_sweep.ray_config(s).max_ship_mb == 256


def test_the_ray_launcher_dispatches_every_point_into_the_multirun_layout(monkeypatch, tmp_path):
    seen = {}

    def fake_run_evals(jobs, launcher, ray_cfg, console):
        seen.update(launcher=launcher, address=ray_cfg.address, jobs=jobs)
        return [ValueError("boom") if j.name == "vla_cache" else {} for j in jobs]

    monkeypatch.setattr(ray_sweep, "run_evals", fake_run_evals)
    monkeypatch.setattr(sweep_run, "check_launcher", lambda launcher: None)  # no Ray needed here
    (tmp_path / "ckpt").mkdir()  # preflight checks that it exists; nothing loads it
    rc = sweep_run.main(["sweep.launcher=ray", "sweep.ray.address=head:6379", "sweep.methods=[fastv,vla_cache]",
                         "sweep.keep_ratios=[0.5]", "sweep.bench=false", f"sweep.output_dir={tmp_path / 'out'}",
                         "policy=openvla_tiny", f"policy.path={tmp_path / 'ckpt'}", "env=spatial", "eval.n_episodes=1"])
    assert rc == 1  # no job wrote eval_info.json (the fake ran nothing)
    assert seen["launcher"] == "ray" and seen["address"] == "head:6379"
    tmp_path = tmp_path / "out"
    dirs = {j.name: j.output_dir.relative_to(tmp_path).as_posix() for j in seen["jobs"]}
    assert dirs == {"none": "unpruned/none_0", "vla_cache": "unpruned/vla_cache_1", "fastv@0.5": "pruned/fastv_keep0.5_0"}
    assert "ValueError: boom" in (tmp_path / "unpruned" / "vla_cache_1" / "eval.log").read_text()
    assert (tmp_path / "pruned" / "fastv_keep0.5_0" / "config.yaml").exists()
