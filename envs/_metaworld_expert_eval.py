"""Measure Meta-World's scripted experts through the adapter: success rate and steps to success per task.

    python -m vla_accel.envs._metaworld_expert_eval --episodes 10 [--tasks 0 4] [--max-steps 500] [--render] [--control-hz 20]

Episodes use init states 0..episodes-1; each runs until success or the task's max_steps. The expert
reads only the simulator's state, so cameras are off unless --render asks for them (64x64 frames).
"""

from __future__ import annotations

import argparse
import json
import time

from vla_accel.envs.metaworld_adapter import MT10_TASKS, make_metaworld_env


def run_expert(
    task_id: int, init_state_ids, render_images: bool = False, max_steps: int | None = None, control_hz=None
) -> dict:
    """One task: {"task", "n_episodes", "n_success", "steps_to_success": [...]} (steps only for successes)."""
    env = make_metaworld_env(
        "metaworld", task_id, image_size=64, max_steps=max_steps, render_images=render_images, control_hz=control_hz
    )
    expert = env.expert()
    steps_to_success = []
    try:
        for i in init_state_ids:
            obs, _ = env.reset(options={"init_state_id": i})
            expert.reset()
            for t in range(1, env.max_steps + 1):
                obs, _, terminated, truncated, info = env.step(expert.select_action(obs))
                if terminated or truncated:
                    break
            if info["is_success"]:
                steps_to_success.append(t)
    finally:
        env.close()
    n = len(list(init_state_ids))
    return {"task": MT10_TASKS[task_id], "n_episodes": n, "n_success": len(steps_to_success),
            "steps_to_success": steps_to_success}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10, help="init states 0..episodes-1 per task")
    parser.add_argument("--tasks", type=int, nargs="*", default=list(range(len(MT10_TASKS))))
    parser.add_argument("--render", action="store_true", help="render both cameras as a rollout would")
    parser.add_argument("--control-hz", type=float, default=None, help="default: Meta-World's native 80 Hz")
    parser.add_argument("--max-steps", type=int, default=None, help="override every task's step limit")
    args = parser.parse_args(argv)
    for task_id in args.tasks:
        start = time.perf_counter()
        result = run_expert(task_id, range(args.episodes), args.render, args.max_steps, args.control_hz)
        result["wall_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
