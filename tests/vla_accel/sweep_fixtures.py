"""Synthetic sweep directories: hand-written eval_info.json files (and a bench.json) in a layout like
`vla-accel sweep` / `vla-accel eval -m` leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

from vla_accel.stats import success_metrics

EPISODES = [("spatial", t, i, i) for t in (0, 1) for i in range(5)]  # (suite, task_id, init_state_id, seed)


def write_eval_info(job_dir: Path, accel: dict | None, successes: list[bool], *, hz: float | None = 10.0,
                    flops_total: float | None = 100.0, misses: int = 0, episodes=EPISODES) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    per_episode = [{"episode_ix": i, "suite": s, "task_id": t, "task": f"task{t}", "init_state_id": k,
                    "seed": seed, "success": ok, "sum_reward": float(ok), "max_reward": float(ok),
                    "n_steps": 10} for i, ((s, t, k, seed), ok) in enumerate(zip(episodes, successes))]
    m = success_metrics(sum(successes), len(successes))
    info = {"per_episode": per_episode, "per_task": [], "per_group": {"spatial": m},
            "overall": {**m, "eval_s": 1.0, "eval_ep_s": 0.1, "video_paths": []},
            "config": {"env": {"suite": "spatial"}, "accel": accel}}
    if hz is not None:
        info["timing"] = {"control_hz": 20.0, "n_calls": 100, "n_steps": 100, "warmup_calls": 2,
                          "latency_model": "measured", "latency_param": None,
                          "latency_ms": {"total": {"p50": 1000 / hz, "p90": 1000 / hz, "p99": 1000 / hz,
                                                   "mean": 1000 / hz}},
                          "policy_hz": hz, "loop_hz": hz, "deadline_misses": misses,
                          "deadline_miss_rate": misses / 100, "tokens_kept": None,
                          "flops_per_call": None if flops_total is None else {"prefill": flops_total * 0.8,
                                                                             "vision": flops_total * 0.2,
                                                                             "total": flops_total},
                          "realtime": False}
    (job_dir / "eval_info.json").write_text(json.dumps(info))
    return job_dir


def accel(name: str, keep: float | None = None, skip=()) -> dict:
    return {"name": name, "method": None if keep is None else name, "keep_ratio": keep,
            "skip_layers": list(skip)}


def successes(k: int, n: int = 10) -> list[bool]:
    return [True] * k + [False] * (n - k)


def make_sweep_dir(root: Path, with_bench: bool = True) -> Path:
    """baseline 8/10 at 10 Hz; vla_pruner 0.5 -> 8/10, 0.25 -> 6/10; fastv 0.5 -> 7/10, 0.25 -> 2/10."""
    write_eval_info(root / "unpruned" / "none_0", accel("none"), successes(8), hz=10.0, flops_total=100.0,
                    misses=30)
    table = [("vla_pruner", 0.5, 8, 14.0, 55.0), ("vla_pruner", 0.25, 6, 18.0, 30.0),
             ("fastv", 0.5, 7, 15.0, 52.0), ("fastv", 0.25, 2, 19.0, 28.0)]
    for j, (name, keep, k, hz, flops) in enumerate(table):
        write_eval_info(root / "pruned" / f"{name}_keep{keep}_{j}", accel(name, keep), successes(k), hz=hz,
                        flops_total=flops, misses=5)
    if with_bench:
        # `vla-accel bench`'s results, interleaved in one process: deliberately other Hz than the eval
        # jobs' (which must not be used). Hz = 1000 / p50 total latency.
        def result(name, method, keep, s):
            return {"name": name, "method": method, "keep_ratio": keep, "n_calls": 20, "speedup": s,
                    "latency_ms": {"total": {"p50": 50.0 / s, "p90": 60.0 / s, "mean": 70.0 / s}}}

        results = [result("none", "none", None, 1.0)]
        speedups = (1.5, 2.0, 1.6, 2.2)
        results += [result(f"{name}@{keep:g}", name, keep, s) for (name, keep, *_), s in zip(table, speedups)]
        results += [result("skip[2]", "layer_skip", None, 1.25), result("head_cache/2", "head_cache", None, 1.1)]
        (root / "bench.json").write_text(json.dumps({"command": "vla-accel bench ...", "results": results}))
    return root
