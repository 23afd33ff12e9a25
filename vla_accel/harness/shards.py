"""The pure parts of running one evaluation as several jobs (no Ray here; vla_accel.harness.dispatch
drives them): which episodes a shard runs, what travels to a worker and back, and the merge.

Episodes are planned once (eval.plan_episodes: task by task, episode i of a task from init state
i % n_init_states with seed eval.seed + i) and numbered by episode_ix. Shard k of n runs the k-th of n
contiguous, near-equal slices of that numbering, so each shard builds the envs of few tasks; every
episode resets its env, its policy and the global RNGs from its own seed (rollout.run_episode), so an
episode's result does not depend on which shard ran it, and the merge in episode_ix order is the
unsharded run's eval_info.json (the speed fields aside).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

RENDER_ENV = {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": None}  # None: the same as MUJOCO_GL
PACKAGE_ROOMS = ("envs", "policies", "conf")  # install under vla_accel but live at the repository top
SKIP_FILES = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def shard_bounds(n_episodes: int, n_shards: int) -> list[tuple[int, int]]:
    """[start, stop) of each non-empty shard over episode_ix 0..n-1, contiguous and near-equal
    (the first n % n_shards shards take one more); fewer than n_shards when there are fewer episodes."""
    if n_shards < 1:
        raise ValueError(f"the number of shards must be >= 1, got {n_shards!r}")
    n_shards = min(n_shards, n_episodes)
    base, extra = divmod(n_episodes, max(n_shards, 1))
    bounds, start = [], 0
    for k in range(n_shards):
        stop = start + base + (k < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def select_shard(plan: list[list], shard_ix: int, n_shards: int) -> list[list]:
    """The plan's groups (tasks) cut to the episodes of shard `shard_ix` of `n_shards`; empty groups dropped."""
    n = sum(len(g) for g in plan)
    bounds = shard_bounds(n, n_shards)
    if not 0 <= shard_ix < len(bounds):
        raise ValueError(f"shard {shard_ix} of {n_shards}: {n} episodes make {len(bounds)} non-empty shards")
    start, stop = bounds[shard_ix]
    cut = [[ep for ep in group if start <= ep.episode_ix < stop] for group in plan]
    return [g for g in cut if g]


@dataclass
class ShardResult:
    """What a shard job sends back: its episode records (eval_episodes.jsonl's lines, in run order),
    its untimed warm-up calls, the files it wrote (videos; relative path -> bytes), its printed log,
    its own wall time and where it ran."""

    shard_ix: int
    n_shards: int
    records: list[dict]
    n_warmup: int
    eval_s: float
    files: dict[str, bytes] = field(default_factory=dict)
    log: str = ""
    worker: dict = field(default_factory=dict)


def merge_records(results: list[ShardResult]) -> dict[int, dict]:
    """{episode_ix: record} of every shard; an episode that two shards ran raises."""
    merged: dict[int, dict] = {}
    for r in sorted(results, key=lambda r: r.shard_ix):
        for rec in r.records:
            if rec["episode_ix"] in merged:
                raise ValueError(f"episode {rec['episode_ix']} came back from two shards")
            merged[rec["episode_ix"]] = rec
    return dict(sorted(merged.items()))


def shards_block(results: list[ShardResult], launcher: str, wall_s: float) -> dict:
    """eval_info.json's `shards`: how the run was split and where each shard ran."""
    rs = sorted(results, key=lambda r: r.shard_ix)
    return {"n_shards": len(rs), "launcher": launcher, "wall_s": float(wall_s),
            "per_shard": [{"shard": r.shard_ix, "n_episodes": len(r.records), "eval_s": r.eval_s,
                           "episode_ix": [r.records[0]["episode_ix"], r.records[-1]["episode_ix"]] if r.records else [],
                           **r.worker} for r in rs]}


# ---------------------------------------------------------------- files that travel


def pack_dir(root: str | Path) -> dict[str, bytes]:
    """Every file under root as {relative posix path: bytes}."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unpack_dir(files: dict[str, bytes], dest: str | Path) -> Path:
    dest = Path(dest)
    for rel, data in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"refusing to write {rel!r} outside {dest}")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    return dest


def dir_bytes(root: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def files_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return h.hexdigest()[:16]


def materialize(payload: dict, cache_root: str | Path | None = None) -> Path:
    """A shipped checkpoint ({"digest", "files"}) on this node's disk, once per digest (a worker
    running several shards, or two at once, writes it once: into a temporary folder renamed into place)."""
    root = Path(cache_root or Path(tempfile.gettempdir()) / "vla_accel_checkpoints")
    dest = root / payload["digest"]
    if not dest.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
        unpack_dir(payload["files"], tmp)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ---------------------------------------------------------------- checkpoints


def checkpoint_dir(path: str | Path) -> Path:
    """The absolute directory a policy.path loads (policies.common.factory: the directory itself when it
    holds config.json, else a `vla-accel train` output_dir's newest checkpoints/step_*), or the absolute
    path as given when it holds neither (the loader then says what is wrong)."""
    from vla_accel.policies.common.factory import resolve_path

    p = resolve_path(path).absolute()
    if (p / "config.json").is_file():
        return p
    steps = sorted((p / "checkpoints").glob("step_*"))
    return steps[-1] if steps and (steps[-1] / "config.json").is_file() else p


@dataclass(frozen=True)
class CheckpointPlan:
    """How a job's policy.path reaches the workers: `path` (absolute, every node must read it there) or
    shipped (`payload` through the object store)."""

    path: str | None
    payload: dict | None = None
    size_mb: float = 0.0


def plan_checkpoint(path: str | None, max_ship_mb: float) -> CheckpointPlan:
    """Resolve a driver-side policy.path (relative to the driver's working directory or the repository)
    to an absolute checkpoint directory; ship it when it exists here and is at most max_ship_mb."""
    if not path:
        return CheckpointPlan(None)
    ckpt = checkpoint_dir(path)
    if not ckpt.is_dir():
        return CheckpointPlan(str(ckpt))  # maybe on the workers' shared storage; they check it
    size_mb = dir_bytes(ckpt) / 2**20
    if size_mb > max_ship_mb:
        return CheckpointPlan(str(ckpt), None, size_mb)
    files = pack_dir(ckpt)
    return CheckpointPlan(str(ckpt), {"digest": files_digest(files), "files": files, "name": ckpt.name}, size_mb)


def missing_checkpoint_error(path: str, size_mb: float, max_ship_mb: float, host: str) -> FileNotFoundError:
    why = (f"the checkpoint ({size_mb:.0f} MB) is over ray.max_ship_mb={max_ship_mb:g}, so it is not shipped"
           if size_mb else "it does not exist on the driver either, so it could not be shipped")
    return FileNotFoundError(f"policy.path {path} is not readable on the worker {host}: {why}; put it on storage "
                             "every node mounts at that path, or raise ray.max_ship_mb")


# ---------------------------------------------------------------- runtime_env


def render_env(environ: dict | None = None) -> dict[str, str]:
    """MUJOCO_GL and PYOPENGL_PLATFORM as this driver renders (headless EGL unless set otherwise)."""
    environ = os.environ if environ is None else environ
    gl = environ.get("MUJOCO_GL", RENDER_ENV["MUJOCO_GL"])
    return {"MUJOCO_GL": gl, "PYOPENGL_PLATFORM": environ.get("PYOPENGL_PLATFORM", gl)}


def stage_package(dest: str | Path) -> Path:
    """A copy of the running vla_accel, with envs/, policies/ and conf/ inside it as they install, under
    dest/vla_accel: what runtime_env py_modules uploads (code and configs, no caches)."""
    import importlib.util

    import vla_accel

    package = Path(vla_accel.__file__).resolve().parent
    out = Path(dest) / "vla_accel"
    shutil.copytree(package, out, ignore=SKIP_FILES, dirs_exist_ok=True)
    for room in PACKAGE_ROOMS:  # an editable install maps them from the repository's top (pyproject.toml)
        src = Path(importlib.util.find_spec(f"vla_accel.{room}").submodule_search_locations[0]).resolve()
        if not src.is_relative_to(package):
            shutil.copytree(src, out / room, ignore=SKIP_FILES, dirs_exist_ok=True)
    return out


def runtime_env(env_vars: dict | None = None, package_dir: str | Path | None = None,
                environ: dict | None = None) -> dict:
    """Ray's runtime_env for the jobs: rendering (and the user's env_vars), the staged package."""
    env = {**render_env(environ), **{str(k): str(v) for k, v in (env_vars or {}).items()}}
    out: dict = {"env_vars": env}
    if package_dir is not None:
        out["py_modules"] = [str(package_dir)]
    return out


def job_resources(num_cpus: float, num_gpus: float | None, policy_device: str | None) -> dict:
    """What one job asks Ray for: num_gpus null = 1 for a CUDA policy, 0 otherwise."""
    if num_gpus is None:
        num_gpus = 1.0 if str(policy_device or "").startswith("cuda") else 0.0
    return {"num_cpus": float(num_cpus), "num_gpus": float(num_gpus)}
