"""Run the tabletop's scripted expert on the fixed init states of every task and report its success.

Noise (optional) is Gaussian, added to the expert's action before execution and clipped to [-1, 1],
as demo collection does. Prints a per-task table and writes the figures to a JSON file.

    python scripts/check_experts.py --suites spatial object goal long --noise 0.1 --out experts.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from vla_accel.envs.tabletop import SUITES, make_tabletop_env
from vla_accel.envs.tabletop.layout import NUM_INIT_STATES


def run_task(suite: str, task_id: int, init_ids: list[int], noise: float, render: bool, seed: int) -> dict:
    env = make_tabletop_env(suite, task_id, render_images=render)
    expert = env.unwrapped.expert()
    rng = np.random.default_rng([seed, task_id, SUITES.index(suite)])
    episodes = []
    try:
        for i in init_ids:
            obs, _ = env.reset(options={"init_state_id": i})
            expert.reset()
            success, steps = False, 0
            while True:
                action = expert.select_action(obs)
                if noise > 0:
                    action = np.clip(action + rng.normal(0.0, noise, size=7), -1.0, 1.0).astype(np.float32)
                obs, _, terminated, truncated, info = env.step(action)
                steps += 1
                if terminated or truncated:
                    success = bool(info["is_success"])
                    break
            episodes.append({"init_state_id": i, "success": success, "n_steps": steps})
    finally:
        env.close()
    n_success = sum(e["success"] for e in episodes)
    lengths = [e["n_steps"] for e in episodes if e["success"]]
    return {
        "suite": suite,
        "task_id": task_id,
        "task": env.task.name,
        "max_steps": env.max_steps,
        "n_episodes": len(episodes),
        "n_success": n_success,
        "pc_success": 100.0 * n_success / len(episodes),
        "median_steps_success": float(np.median(lengths)) if lengths else None,
        "max_steps_success": int(max(lengths)) if lengths else None,
        "failed_init_states": [e["init_state_id"] for e in episodes if not e["success"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    parser.add_argument("--tasks", type=int, nargs="*", default=None, help="task ids (default: all)")
    parser.add_argument("--n-init", type=int, default=NUM_INIT_STATES, help="init states 0..n-1 per task")
    parser.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on executed actions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--render", action="store_true", help="render camera images too (slower)")
    parser.add_argument("--out", default="expert_check.json", help="JSON file to write")
    args = parser.parse_args()
    if not 1 <= args.n_init <= NUM_INIT_STATES:
        parser.error(f"--n-init must be in 1..{NUM_INIT_STATES}")

    start = time.perf_counter()
    results = []
    for suite in args.suites:
        from vla_accel.envs.tabletop import list_tasks

        task_ids = args.tasks if args.tasks is not None else [t.task_id for t in list_tasks(suite)]
        for task_id in task_ids:
            r = run_task(suite, task_id, list(range(args.n_init)), args.noise, args.render, args.seed)
            results.append(r)
            print(
                f"{suite:8s} {task_id:2d} {r['pc_success']:6.1f}%  ({r['n_success']}/{r['n_episodes']})  "
                f"steps median {r['median_steps_success']} max {r['max_steps_success']} / {r['max_steps']}  "
                f"{r['task']}"
                + (f"  failed: {r['failed_init_states']}" if r["failed_init_states"] else ""),
                flush=True,
            )
    per_suite = {}
    for suite in args.suites:
        rs = [r for r in results if r["suite"] == suite]
        n, k = sum(r["n_episodes"] for r in rs), sum(r["n_success"] for r in rs)
        per_suite[suite] = {
            "n_episodes": n,
            "n_success": k,
            "pc_success": 100.0 * k / n,
            "min_task_pc_success": min(r["pc_success"] for r in rs),
        }
        print(f"== {suite}: {100.0 * k / n:.1f}% ({k}/{n}), worst task {per_suite[suite]['min_task_pc_success']:.0f}%")
    elapsed = time.perf_counter() - start
    print(f"({elapsed:.0f} s)")
    with open(args.out, "w") as f:
        json.dump({"noise": args.noise, "seed": args.seed, "n_init": args.n_init, "per_suite": per_suite,
                   "per_task": results, "elapsed_s": elapsed}, f, indent=1)


if __name__ == "__main__":
    main()
