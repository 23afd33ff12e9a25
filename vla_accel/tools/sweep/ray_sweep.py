"""`vla-accel sweep sweep.launcher=ray`: every eval job of the sweep (every shard of it, with
eval.shards=N) as a Ray task through Ray's own API (vla_accel.harness.dispatch), on a local instance or
an existing cluster (sweep.ray.*). The results come back through Ray and are written here in the layout
the Hydra launchers leave (<block>/<accel>[_keep<r>]_<n>/eval_info.json), so aggregate reads either.

Why not Hydra's Ray launcher plugin (hydra-ray-launcher 1.2.2, its last release): joining an existing
cluster fails in every job (it passes object_store_memory to ray.init, hydra issue #2893, fixed upstream
but not released), it pins ray<3 and cloudpickle<3, it carries no runtime_env (rendering variables,
code, checkpoints), and its jobs write to the worker's disk; one eval cannot be split across workers.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from vla_accel.harness.cluster_config import RaySchema
from vla_accel.harness.dispatch import EvalJob, run_evals
from vla_accel.tools.sweep.spec import SweepPoint, SweepSpec


def job_dir_name(point: SweepPoint, cfg, num: int) -> str:
    """The folder Hydra's multirun would give the job (MultirunPart.subdir, with hydra.job.num = num)."""
    if point.keep_ratio is not None:
        return f"{cfg.accel.name}_keep{cfg.accel.keep_ratio}_{num}"
    return f"{cfg.accel.name}_{num}"


def sweep_jobs(spec: SweepSpec, cfgs: dict, sweep_dir: Path) -> list[EvalJob]:
    """One EvalJob per point, block by block, each with its composed eval config."""
    jobs = []
    for part in spec.multirun_parts():
        jobs += [EvalJob(cfgs[p], sweep_dir / part.name / job_dir_name(p, cfgs[p], n), p.label)
                 for n, p in enumerate(part.points)]
    return jobs


def ray_config(spec: SweepSpec):
    """sweep.ray as the DictConfig the dispatcher reads."""
    return OmegaConf.structured(RaySchema(**spec.ray))


def run_ray_jobs(spec: SweepSpec, cfgs: dict, sweep_dir: Path, console: Console) -> int:
    """Run the sweep's jobs on Ray; each job's folder gets its config.yaml, and an eval.log with the error
    when it failed. Returns how many failed."""
    jobs = sweep_jobs(spec, cfgs, sweep_dir)
    ray_cfg = ray_config(spec)
    console.print(f"[bold]ray[/bold]: {len(jobs)} eval jobs on {ray_cfg.address or 'a local Ray instance'}")
    outcomes = run_evals(jobs, "ray", ray_cfg, console)
    failed = 0
    for job, out in zip(jobs, outcomes):
        job.output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(job.cfg, job.output_dir / "config.yaml")
        if isinstance(out, Exception):
            failed += 1
            (job.output_dir / "eval.log").write_text(f"{type(out).__name__}: {out}\n", encoding="utf-8")
            console.print(f"[red]{job.name} failed[/red]: {type(out).__name__}: {str(out).strip()[:500]}")
    return failed


__all__ = ["job_dir_name", "ray_config", "run_ray_jobs", "sweep_jobs"]
