"""Sharded evaluation without Ray: the episode slices, the merge (identical to the unsharded run,
episode for episode), checkpoint resolution, what travels to a worker (runtime_env, the staged package)."""

import json
import sys
from pathlib import Path

import pytest
from fixtures.fakes import compose_config, needs_real_tabletop, with_expert_defaults

from vla_accel.harness import dispatch, shards
from vla_accel.harness.eval import evaluate, plan_episodes

SPEED_KEYS = {"loop_s"}


def _cfg(*overrides):
    return compose_config("eval", with_expert_defaults(["eval.progress=false", "env.image_size=16", *overrides]))


def _episodes(info):
    return [{k: v for k, v in e.items() if k not in SPEED_KEYS} for e in info["per_episode"]]


def _same_results(a, b):
    assert _episodes(a) == _episodes(b)
    assert a["per_task"] == b["per_task"] and a["per_group"] == b["per_group"]
    drop = {"eval_s", "eval_ep_s"}
    assert {k: v for k, v in a["overall"].items() if k not in drop} == {
        k: v for k, v in b["overall"].items() if k not in drop}


# ---------------------------------------------------------------- slices


@pytest.mark.parametrize("n, k, expected", [
    (10, 3, [(0, 4), (4, 7), (7, 10)]), (4, 4, [(0, 1), (1, 2), (2, 3), (3, 4)]), (2, 5, [(0, 1), (1, 2)]),
    (7, 1, [(0, 7)])])
def test_shard_bounds_are_contiguous_near_equal_and_never_empty(n, k, expected):
    assert shards.shard_bounds(n, k) == expected


def test_every_planned_episode_is_in_exactly_one_shard_in_the_original_order(fake_envs):
    plan = plan_episodes(_cfg("eval.n_episodes=5"))  # 3 tasks x 5
    cut = [shards.select_shard(plan, k, 4) for k in range(4)]
    flat = [ep for part in cut for group in part for ep in group]
    assert [ep.episode_ix for ep in flat] == list(range(15))
    assert [sum(len(g) for g in part) for part in cut] == [4, 4, 4, 3]
    assert [g[0].task.task_id for g in cut[1]] == [0, 1]  # episodes 4..7 straddle tasks 0 and 1
    with pytest.raises(ValueError, match="non-empty shards"):
        shards.select_shard(plan, 15, 20)


def test_two_shards_returning_one_episode_is_an_error():
    r = shards.ShardResult(0, 2, [{"episode_ix": 0}], 0, 0.0)
    with pytest.raises(ValueError, match="two shards"):
        shards.merge_records([r, shards.ShardResult(1, 2, [{"episode_ix": 0}], 0, 0.0)])


# ---------------------------------------------------------------- merge = unsharded run


@pytest.mark.parametrize("n_shards", [2, 5, 12, 40])
def test_a_sharded_eval_merges_into_the_unsharded_eval_info(fake_envs, tmp_path, n_shards):
    plain = evaluate(_cfg("eval.n_episodes=4"), tmp_path / "plain")
    sharded = evaluate(_cfg("eval.n_episodes=4", f"eval.shards={n_shards}"), tmp_path / "sharded")
    _same_results(plain, sharded)
    on_disk = json.loads((tmp_path / "sharded" / "eval_info.json").read_text())
    assert on_disk["shards"]["n_shards"] == min(n_shards, 12) and on_disk["shards"]["launcher"] == "basic"
    assert sum(s["n_episodes"] for s in on_disk["shards"]["per_shard"]) == 12
    log = [json.loads(line) for line in (tmp_path / "sharded" / "eval_episodes.jsonl").read_text().splitlines()]
    assert [r["episode_ix"] for r in log] == list(range(12)) and all("calls" in r for r in log)
    assert on_disk["timing"]["n_calls"] == plain["timing"]["n_calls"]


def test_shards_film_the_same_episodes_and_their_videos_come_back(fake_envs, tmp_path):
    args = ("eval.n_episodes=3", "eval.videos=true", "eval.max_videos=2")
    plain = evaluate(_cfg(*args), tmp_path / "plain")
    sharded = evaluate(_cfg(*args, "eval.shards=3"), tmp_path / "sharded")
    names = sorted(p.name for p in (tmp_path / "sharded" / "videos").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "plain" / "videos").iterdir()) == [
        "eval_episode_0.mp4", "eval_episode_3.mp4"]
    assert [Path(p).name for p in sharded["overall"]["video_paths"]] == [
        Path(p).name for p in plain["overall"]["video_paths"]]


@needs_real_tabletop
def test_a_tiny_policy_sharded_from_a_relative_path_matches_its_unsharded_run(tmp_path, monkeypatch):
    """The real tabletop env and a random tiny OpenVLA: the shards rebuild the policy from a checkpoint
    given relative to the driver's working directory (resolved to an absolute path before they run)."""
    from fixtures.tiny_models import tiny_openvla

    monkeypatch.chdir(tmp_path)
    tiny_openvla(num_layers=2).save_pretrained(tmp_path / "ckpt")
    args = ["policy=openvla_tiny", "policy.path=ckpt", "env=spatial", "env.image_size=32", "env.task_ids=[0,1]",
            "eval.n_episodes=2", "eval.max_steps=3", "eval.warmup_calls=1", "eval.progress=false"]
    plain = evaluate(compose_config("eval", args), tmp_path / "plain")
    sharded = evaluate(compose_config("eval", [*args, "eval.shards=3"]), tmp_path / "sharded")
    _same_results(plain, sharded)
    assert sharded["config"]["policy"]["path"] == "ckpt"  # the config as given; the shards got the absolute path


def test_eval_shard_settings_are_checked():
    from vla_accel.harness.eval import _check_eval_cfg

    base = dict(compose_config("eval", with_expert_defaults([])).eval)
    for bad, match in [({"shards": 0}, "eval.shards"), ({"launcher": "slurm"}, "eval.launcher"),
                       ({"resume": True, "shards": 2}, "eval.resume"), ({"ray": {"num_gpus": -1}}, "num_gpus")]:
        with pytest.raises(ValueError, match=match):
            _check_eval_cfg({**base, **bad})


# ---------------------------------------------------------------- checkpoints


def _fake_ckpt(path: Path, size: int = 10) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"x" * size)
    return path


def test_a_relative_checkpoint_resolves_to_an_absolute_directory_and_small_ones_ship(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_ckpt(tmp_path / "runs" / "r" / "checkpoints" / "step_000100")
    newest = _fake_ckpt(tmp_path / "runs" / "r" / "checkpoints" / "step_000200")
    plan = shards.plan_checkpoint("runs/r", max_ship_mb=1)  # a train output_dir: its newest step
    assert plan.path == str(newest) and Path(plan.path).is_absolute()
    assert sorted(plan.payload["files"]) == ["config.json", "model.safetensors"]
    local = shards.materialize(plan.payload, tmp_path / "cache")
    assert local == shards.materialize(plan.payload, tmp_path / "cache")  # once per digest
    assert shards.pack_dir(local) == shards.pack_dir(newest)
    assert shards.plan_checkpoint("runs/r", max_ship_mb=0).payload is None  # over the limit: path only
    assert shards.plan_checkpoint(None, 1) == shards.CheckpointPlan(None)


def test_a_worker_without_the_checkpoint_says_why(tmp_path):
    job = {"cfg": {"policy": {"path": "x"}}, "checkpoint": {"path": str(tmp_path / "nowhere"), "size_mb": 900.0,
                                                           "max_ship_mb": 256.0}}
    from omegaconf import OmegaConf

    with pytest.raises(FileNotFoundError, match=r"not readable on the worker .*over ray.max_ship_mb=256"):
        dispatch._localize(OmegaConf.create(job["cfg"]), job, None)


def test_unpacking_refuses_paths_outside_the_destination(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        shards.unpack_dir({"../evil": b""}, tmp_path)


# ---------------------------------------------------------------- what travels


def test_runtime_env_carries_rendering_user_variables_and_the_package(tmp_path):
    env = shards.runtime_env({"OMP_NUM_THREADS": 2}, tmp_path / "vla_accel", environ={})
    assert env == {"env_vars": {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "OMP_NUM_THREADS": "2"},
                   "py_modules": [str(tmp_path / "vla_accel")]}
    assert shards.render_env({"MUJOCO_GL": "osmesa"}) == {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}


def test_the_staged_package_holds_code_and_configs_as_installed(tmp_path):
    pkg = shards.stage_package(tmp_path)
    for rel in ("harness/dispatch.py", "envs/__init__.py", "policies/__init__.py", "conf/eval.yaml",
                "conf/sweep/main.yaml", "conf/accel"):
        assert (pkg / rel).exists(), rel
    assert not list(pkg.rglob("__pycache__")) and not list(pkg.rglob("*.pyc"))


@pytest.mark.parametrize("gpus, device, expected", [(None, "cuda", 1.0), (None, "cuda:1", 1.0), (None, "cpu", 0.0),
                                                    (0.5, "cuda", 0.5), (0, "cuda", 0.0)])
def test_jobs_ask_for_a_gpu_when_the_policy_runs_on_cuda(gpus, device, expected):
    assert shards.job_resources(1, gpus, device) == {"num_cpus": 1.0, "num_gpus": expected}


def test_auth_environment(tmp_path):
    from omegaconf import OmegaConf

    token = tmp_path / "tok"
    token.write_text("t")
    cfg = OmegaConf.create({"auth_token_path": str(token)})
    assert dispatch.auth_environment(cfg, {}) == {"RAY_AUTH_TOKEN_PATH": str(token), "RAY_AUTH_MODE": "token"}
    none = OmegaConf.create({"auth_token_path": None})
    assert dispatch.auth_environment(none, {"RAY_AUTH_TOKEN": "t"}) == {"RAY_AUTH_MODE": "token"}
    assert dispatch.auth_environment(none, {"RAY_AUTH_TOKEN": "t", "RAY_AUTH_MODE": "disabled"}) == {}
    assert dispatch.auth_environment(none, {}) == {}
    with pytest.raises(ValueError, match="no such file"):
        dispatch.auth_environment(OmegaConf.create({"auth_token_path": str(tmp_path / "none")}), {})


def test_the_ray_launcher_without_ray_names_the_extra(fake_envs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ValueError, match=r"pip install -e \.\[ray\]"):
        evaluate(_cfg("eval.n_episodes=1", "eval.launcher=ray"), tmp_path)
