"""Real sweeps: a tiny random-weight OpenVLA-style checkpoint, 1 task x 1 episode of a few steps, through
Hydra's basic and joblib launchers (and Ray, slow), as child `vla-accel eval -m` processes."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from fixtures.fakes import needs_real_tabletop

from vla_accel.tools.sweep import run as sweep_run

pytestmark = needs_real_tabletop


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from fixtures.tiny_models import tiny_openvla

    path = tmp_path_factory.mktemp("ckpt") / "openvla_tiny"
    tiny_openvla(num_layers=4).save_pretrained(path)
    return path


def _sweep(tmp_path, ckpt, *extra) -> Path:
    out = tmp_path / "sweep"
    rc = sweep_run.main(["sweep.methods=[fastv]", "sweep.keep_ratios=[0.5]", "sweep.bench=false",
                         "sweep.launcher=basic",
                         f"sweep.output_dir={out}", "policy=openvla_tiny", f"policy.path={ckpt}",
                         "env.image_size=32", "env.task_ids=[0]",
                         "eval.n_episodes=1", "eval.max_steps=4", "eval.warmup_calls=1", *extra])
    assert rc == 0
    return out


def _launcher_used(out: Path, block: str = "pruned") -> str:
    """The launcher class Hydra recorded for one block's multirun."""
    from omegaconf import OmegaConf

    return OmegaConf.load(out / block / "multirun.yaml").hydra.launcher._target_


def _check(out: Path, bench: bool = False) -> list[dict]:
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["none", "fastv@0.5"]
    assert all(r["n_episodes"] == "1" and r["same_episodes"] == "True" for r in rows)
    source = "bench (interleaved)" if bench else "eval jobs (NOT interleaved)"
    assert float(rows[0]["policy_hz"]) > 0 and {r["speed_source"] for r in rows} == {source}
    assert 0 < float(rows[1]["flops_ratio"]) < 1  # half the visual tokens from layer K on
    assert float(rows[1]["tokens_kept"]) == 8.0  # of the tiny model's 16
    assert (out / "success_vs_hz.png").stat().st_size > 10_000
    return rows


def test_sweep_through_the_basic_launcher_then_the_bench(tmp_path, tiny_checkpoint):
    out = _sweep(tmp_path, tiny_checkpoint, "sweep.bench=true", "bench.rounds=3", "bench.warmup_rounds=1",
                 "bench.n_episodes=1")
    rows = _check(out, bench=True)
    assert float(rows[1]["speedup"]) > 0 and json.loads((out / "bench.json").read_text())["results"]
    assert _launcher_used(out).endswith("BasicLauncher")
    assert sorted(p.parent.name for p in out.rglob("eval_info.json")) == ["fastv_keep0.5_0", "none_0"]


def test_sweep_through_the_joblib_launcher(tmp_path, tiny_checkpoint):
    """VLA-Cache takes no keep ratio, so with the baseline it is one multirun of two parallel jobs."""
    out = _sweep(tmp_path, tiny_checkpoint, "sweep.methods=[vla_cache]", "sweep.launcher=joblib", "sweep.n_jobs=2")
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["none", "vla_cache"]
    assert all(r["same_episodes"] == "True" and float(r["policy_hz"]) > 0 for r in rows)
    assert _launcher_used(out, "unpruned").endswith("JoblibLauncher")
    assert not (out / "pruned").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray not installed (pip install -e .[ray])")
def test_sweep_through_a_local_ray_instance(tmp_path, tiny_checkpoint):
    """Ray tasks on a local instance (tests/tools/test_ray_cluster.py: an existing cluster)."""
    out = _sweep(tmp_path, tiny_checkpoint, "sweep.launcher=ray", "sweep.ray.local_num_cpus=2")
    _check(out)
    assert sorted(p.parent.name for p in out.rglob("eval_info.json")) == ["fastv_keep0.5_0", "none_0"]
    assert not (out / "pruned" / "multirun.yaml").exists()  # no Hydra multirun: Ray's own API
