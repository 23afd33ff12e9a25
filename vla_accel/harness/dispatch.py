"""Evaluations as shard jobs: `vla-accel eval eval.shards=N` (and every job of `vla-accel sweep
sweep.launcher=ray`) runs here, in this process one shard after another (eval.launcher=basic) or as
Ray tasks (eval.launcher=ray, eval.ray.*: vla_accel.harness.cluster_config).

A job needs nothing from the driver's working directory: its resolved config travels as data, the
code and configs through runtime_env py_modules (shards.stage_package), the rendering environment
through runtime_env env_vars, the checkpoint through the object store (or at an absolute path every
node reads, when it is over ray.max_ship_mb), and the episode records and videos come back as the
task's return value; the driver writes eval_episodes.jsonl and eval_info.json (vla_accel.harness.shards
for the pure parts). Ray is imported only when a Ray launcher runs (pip install -e .[ray]).
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from vla_accel.harness.shards import (CheckpointPlan, ShardResult, job_resources, materialize, merge_records,
                                      missing_checkpoint_error, pack_dir, plan_checkpoint, render_env, runtime_env,
                                      shard_bounds, shards_block, stage_package, unpack_dir)

RAY_HINT = "pip install -e .[ray]"


@dataclass
class EvalJob:
    """One evaluation to run as shards: its composed config, where its results go, a name for logs."""

    cfg: DictConfig
    output_dir: Path
    name: str = "eval"


def require_ray():
    try:
        import ray
    except ImportError as e:
        raise ValueError(f"a Ray launcher needs Ray, which is not installed: {RAY_HINT}") from e
    return ray


# ---------------------------------------------------------------- on the worker


def run_shard(job: dict, payload: dict | None = None) -> ShardResult:
    """Run shard job["shard"] = [k, n] of the evaluation job["cfg"] (a resolved config as plain data) in a
    temporary directory of this node; return its records and files. Ray runs it on a worker; the basic
    launcher calls it directly."""
    for key, value in render_env().items():
        os.environ.setdefault(key, value)  # before mujoco is first imported (runtime_env set them already)
    from vla_accel.harness import eval as ev

    cfg = OmegaConf.create(job["cfg"])
    _localize(cfg, job, payload)
    console = Console(file=io.StringIO(), width=160)
    k, n = job["shard"]
    with tempfile.TemporaryDirectory(prefix="vla_accel_shard_") as tmp:
        run = ev.prepare(cfg, Path(tmp), console, shard=(k, n))
        start = time.perf_counter()
        ev.run_episodes(run)
        eval_s = time.perf_counter() - start
        videos = Path(tmp) / "videos"
        files = {f"videos/{rel}": data for rel, data in pack_dir(videos).items()} if videos.is_dir() else {}
    return ShardResult(k, n, [run.records[ix] for ix in sorted(run.records)], run.n_warmup, eval_s, files,
                       console.file.getvalue(), worker_info())


def _localize(cfg: DictConfig, job: dict, payload: dict | None) -> None:
    """policy.path -> the shipped copy on this node or the absolute path (checked here); a Ray-assigned
    GPU is `cuda` (Ray sets CUDA_VISIBLE_DEVICES to the job's own devices)."""
    ckpt = job.get("checkpoint") or {}
    if payload is not None:
        cfg.policy.path = str(materialize(payload))
    elif ckpt.get("path"):
        if not Path(ckpt["path"]).exists():
            raise missing_checkpoint_error(ckpt["path"], ckpt.get("size_mb", 0.0), ckpt.get("max_ship_mb", 0.0),
                                           socket.gethostname())
        cfg.policy.path = ckpt["path"]
    device = str(cfg.policy.get("device") or "")
    if job.get("gpus") and device.startswith("cuda:"):
        cfg.policy.device = "cuda"


def worker_info() -> dict:
    import vla_accel

    return {"host": socket.gethostname(), "pid": os.getpid(), "cwd": os.getcwd(),
            "package": str(Path(vla_accel.__file__).parent)}


# ---------------------------------------------------------------- on the driver


def evaluate_dispatched(cfg: DictConfig, output_dir: Path, console: Console) -> dict:
    """`vla-accel eval` with eval.shards > 1 or eval.launcher=ray: one job; raise if it failed."""
    outcome = run_evals([EvalJob(cfg, Path(output_dir))], cfg.eval.launcher, cfg.eval.ray, console)[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def run_evals(jobs: list[EvalJob], launcher: str, ray_cfg, console: Console) -> list[dict | Exception]:
    """Every job's shards on `launcher` (basic | ray), each job merged into its output_dir as soon as its
    shards are back; per job its eval_info, or the exception that stopped it."""
    from vla_accel.harness import eval as ev

    runs, tasks = [], []
    for j, job in enumerate(jobs):
        run = ev.prepare(job.cfg, job.output_dir, console)  # checks and plans the whole run, here
        runs.append(run)
        max_mb = float(ray_cfg.max_ship_mb) if launcher == "ray" else 0.0
        ckpt = plan_checkpoint(job.cfg.policy.get("path"), max_mb)
        n = sum(len(g) for g in run.plan)
        tasks += [(j, _job_data(job.cfg, k, int(job.cfg.eval.shards), ckpt, max_mb), ckpt)
                  for k in range(len(shard_bounds(n, int(job.cfg.eval.shards))))]
    start = time.perf_counter()
    if launcher == "basic":
        results = {}
        for j, data, _ in tasks:
            results.setdefault(j, []).append(_try(run_shard, data))
    else:
        results = run_on_ray(tasks, ray_cfg, console, [job.name for job in jobs])
    wall_s = time.perf_counter() - start
    return [_merge_job(runs[j], results.get(j, []), launcher, wall_s, console) for j in range(len(jobs))]


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 -- one failed shard fails its job, not the others
        return e


def _job_data(cfg: DictConfig, k: int, n: int, ckpt: CheckpointPlan, max_mb: float) -> dict:
    data = OmegaConf.to_container(cfg, resolve=True)
    data["eval"]["progress"] = False
    device = cfg.policy.get("device")
    return {"cfg": data, "shard": [k, n], "device": device,
            "checkpoint": {"path": ckpt.path, "size_mb": ckpt.size_mb, "max_ship_mb": max_mb}}


def _merge_job(run, results: list, launcher: str, wall_s: float, console: Console) -> dict | Exception:
    """One job's shards -> eval_episodes.jsonl, videos, eval_info.json in its output_dir."""
    from vla_accel.harness import eval as ev
    from vla_accel.harness.results import EpisodeLog

    if failed := [r for r in results if isinstance(r, Exception)]:
        return failed[0]
    try:
        run.records = merge_records(results)
        planned = {ep.episode_ix for g in run.plan for ep in g}
        if missing := sorted(planned - set(run.records)):
            raise ValueError(f"{len(missing)} planned episodes came back from no shard: {missing[:10]}")
        run.n_warmup = sum(r.n_warmup for r in results)
        with EpisodeLog(run.log_path) as log:
            for rec in run.records.values():
                log.append(rec)
        for r in results:
            unpack_dir(r.files, run.output_dir)
        return ev.report(run, sum(r.eval_s for r in results), console,
                         extra={"shards": shards_block(results, launcher, wall_s)})
    except Exception as e:  # noqa: BLE001
        return e


# ---------------------------------------------------------------- Ray


def run_on_ray(tasks: list[tuple[int, dict, CheckpointPlan]], ray_cfg, console: Console,
               names: list[str]) -> dict[int, list]:
    """Submit every shard as a Ray task (its resources from ray_cfg); {job: [ShardResult | Exception]}."""
    with ray_session(ray_cfg, console) as ray:
        remote = ray.remote(run_shard)
        payloads, pending = {}, {}
        for j, data, ckpt in tasks:
            if ckpt.payload is not None and j not in payloads:
                payloads[j] = ray.put(ckpt.payload)  # once per job, read by each of its shards
            res = job_resources(ray_cfg.num_cpus, ray_cfg.num_gpus, data["device"])
            data = {**data, "gpus": res["num_gpus"] > 0}
            k, n = data["shard"]
            ref = remote.options(**res, name=f"{names[j]}[{k + 1}/{n}]").remote(data, payloads.get(j))
            pending[ref] = (j, k, n)
            console.print(f"ray: {names[j]} shard {k + 1}/{n} submitted ({res['num_cpus']:g} CPU, "
                          f"{res['num_gpus']:g} GPU)")
        return _gather(ray, pending, names, console)


def _gather(ray, pending: dict, names: list[str], console: Console) -> dict[int, list]:
    results: dict[int, list] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        j, k, n = pending.pop(done[0])
        try:
            r = ray.get(done[0])
            console.print(f"ray: {names[j]} shard {k + 1}/{n}: {len(r.records)} episodes in {r.eval_s:.1f} s "
                          f"on {r.worker.get('host')} (pid {r.worker.get('pid')})")
        except Exception as e:  # noqa: BLE001 -- RayTaskError: keep the job's own exception when it has one
            r = getattr(e, "cause", None) or e
            console.print(f"[red]ray: {names[j]} shard {k + 1}/{n} failed[/red]: {str(r).strip().splitlines()[-1]}")
        results.setdefault(j, []).append(r)
    return results


def auth_environment(ray_cfg, environ=None) -> dict[str, str]:
    """The variables Ray reads to authenticate: the token file, and RAY_AUTH_MODE=token whenever a token
    is given (the config's file, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH already in the environment)."""
    environ = os.environ if environ is None else environ
    out = {}
    if ray_cfg.get("auth_token_path"):
        path = Path(str(ray_cfg.auth_token_path)).expanduser().absolute()
        if not path.is_file():
            raise ValueError(f"ray.auth_token_path={ray_cfg.auth_token_path!r}: no such file")
        out["RAY_AUTH_TOKEN_PATH"] = str(path)
    if (out or environ.get("RAY_AUTH_TOKEN") or environ.get("RAY_AUTH_TOKEN_PATH")) and "RAY_AUTH_MODE" not in environ:
        out["RAY_AUTH_MODE"] = "token"
    return out


def _refresh_auth_mode() -> None:
    """Ray caches RAY_AUTH_MODE in its config when first imported; a process that imported Ray before the
    token was set re-reads it the way Ray's own `ray start` does (best effort: a private API)."""
    try:
        from ray._raylet import Config

        Config.initialize("")
    except Exception:  # noqa: BLE001 -- a newer Ray without it reads the environment at connect time
        pass


@contextlib.contextmanager
def ray_session(ray_cfg, console: Console):
    """Ray connected to ray_cfg.address (or a local instance), the jobs' runtime_env set for the session;
    shut down at the end if this call started it."""
    auth = auth_environment(ray_cfg)
    os.environ.update(auth)  # before Ray is imported: it reads its auth mode once (see _refresh_auth_mode)
    ray = require_ray()
    if auth:
        _refresh_auth_mode()
    with tempfile.TemporaryDirectory(prefix="vla_accel_pkg_") as stage:
        env = runtime_env(dict(ray_cfg.get("env_vars") or {}), stage_package(stage) if ray_cfg.ship_code else None)
        started = not ray.is_initialized()
        if started:
            kwargs = {"address": ray_cfg.address} if ray_cfg.address else {
                "num_cpus": ray_cfg.local_num_cpus, "include_dashboard": False}
            ray.init(runtime_env=env, logging_level="WARNING", **kwargs)
            console.print(f"ray: connected to {ray_cfg.address or 'a local instance'} "
                          f"({ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs)")
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()
