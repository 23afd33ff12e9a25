"""A real Ray cluster (slow): a head and a second worker node started with `ray start`, each in its own
temporary directory, with token authentication and without MUJOCO_GL in their environment; the driver
runs from a third directory with relative paths (checkpoint, outputs). A sweep and a sharded eval on
the cluster must give the episodes of a `basic` run; every Ray process started here is stopped."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.fakes import needs_real_tabletop

pytestmark = [pytest.mark.slow, needs_real_tabletop]
ray = pytest.importorskip("ray")

EVAL_ARGS = ["policy=openvla_tiny", "policy.path=ckpt", "env=spatial", "env.image_size=32", "env.task_ids=[0,1]",
             "eval.n_episodes=2", "eval.max_steps=4", "eval.warmup_calls=1", "eval.timing_table=false"]
SWEEP_ARGS = ["sweep.methods=[fastv]", "sweep.keep_ratios=[0.5]", "sweep.bench=false", *EVAL_ARGS]
SPEED_KEYS = {"loop_s"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, token file, {name: directory}); the head and the worker node have 1 CPU each."""
    root = tmp_path_factory.mktemp("cluster")
    dirs = {name: root / name for name in ("head", "worker", "driver")}
    for d in dirs.values():
        d.mkdir()
    token = root / "auth_token"
    token.write_text("vla-accel-test-token-" + os.urandom(8).hex())
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    try:
        subprocess.run([_ray_cli(), "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       cwd=dirs["head"], env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([_ray_cli(), "start", f"--address={address}", *common],
                       cwd=dirs["worker"], env=env, check=True, capture_output=True, timeout=180)
        yield address, token, dirs
    finally:
        subprocess.run([_ray_cli(), "stop", "--force"], env=env, capture_output=True, timeout=120)


def _cli(cwd: Path, *args: str) -> float:
    """`vla-accel <args>` from cwd, in a clean driver environment (the token only via the config); wall s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vla_accel.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"\n$ vla-accel {' '.join(args)}\n  {wall:.1f} s wall", file=sys.stderr)
    return wall


def _episodes(info: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in SPEED_KEYS} for e in info["per_episode"]]


def _infos(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.rglob("eval_info.json")}


def test_a_sweep_and_a_sharded_eval_on_an_existing_cluster_match_a_basic_run(cluster, tmp_path):
    from fixtures.tiny_models import tiny_openvla

    address, token, dirs = cluster
    driver = dirs["driver"]
    tiny_openvla(num_layers=4).save_pretrained(driver / "ckpt")  # relative to the driver only
    ray_args = [f"sweep.ray.address={address}", f"sweep.ray.auth_token_path={token}"]
    t_ray = _cli(driver, "sweep", "sweep.launcher=ray", "sweep.output_dir=on_ray", *ray_args, *SWEEP_ARGS)
    t_basic = _cli(driver, "sweep", "sweep.launcher=basic", "sweep.output_dir=basic", *SWEEP_ARGS)
    eval_ray = [f"eval.ray.address={address}", f"eval.ray.auth_token_path={token}"]
    t_shard = _cli(driver, "eval", *EVAL_ARGS, "eval.shards=2", "eval.launcher=ray", *eval_ray,
                   "hydra.run.dir=sharded")

    on_ray, basic = _infos(driver / "on_ray"), _infos(driver / "basic")
    assert sorted(on_ray) == sorted(basic) == ["fastv_keep0.5_0", "none_0"]
    for name in basic:
        assert _episodes(on_ray[name]) == _episodes(basic[name]), name
        assert on_ray[name]["per_task"] == basic[name]["per_task"]
    sharded = json.loads((driver / "sharded" / "eval_info.json").read_text())
    assert len(sharded["per_episode"]) == 4 and _episodes(sharded) == _episodes(basic["none_0"])
    assert sharded["per_task"] == basic["none_0"]["per_task"]
    shards = sharded["shards"]["per_shard"]
    assert [s["n_episodes"] for s in shards] == [2, 2]
    assert {s["cwd"] for s in shards} == {str(dirs["head"]), str(dirs["worker"])}  # both nodes, not the driver's
    assert all("runtime_resources" in s["package"] for s in shards)  # the code came through Ray
    for d in ("head", "worker"):
        assert not list(dirs[d].rglob("eval_info.json"))  # results came back through Ray
    assert (driver / "on_ray" / "sweep.csv").exists()
    print(f"\nsweep ray {t_ray:.1f} s, sweep basic {t_basic:.1f} s, sharded eval (2 shards, 4 episodes) "
          f"{t_shard:.1f} s; shards on pids {[s['pid'] for s in shards]}", file=sys.stderr)
