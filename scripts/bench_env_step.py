"""Time one tabletop env step (physics substeps + both camera images rendered) per suite.

Actions come from the scripted expert so that the timed steps include grasps and contacts; only
`env.step` is timed (not the expert, not resets). Warm-up steps (GL context, caches) are not counted.

    MUJOCO_GL=egl python scripts/bench_env_step.py --steps 500 --image-size 128
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from vla_accel.envs.tabletop import SUITES, list_tasks, make_tabletop_env


def bench_suite(
    suite: str, steps: int, warmup: int, image_size: int, control_hz: float
) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and process-CPU step times (seconds), `steps` of each, spread over the suite's tasks.
    Each task's env has its own GL context and caches, so each one's first `warmup / n_tasks` steps are
    left out. CPU time (all threads of this process, the GL rasteriser's included) barely depends on
    other load on the machine; wall-clock time does."""
    task_ids = [t.task_id for t in list_tasks(suite)]
    timed = -(-steps // len(task_ids))  # ceil
    skip = max(1, warmup // len(task_ids))
    times: list[float] = []
    cpu_times: list[float] = []
    for task_id in task_ids:
        env = make_tabletop_env(suite, task_id, image_size=image_size, control_hz=control_hz)
        expert = env.unwrapped.expert()
        try:
            obs, _ = env.reset(options={"init_state_id": 0})
            expert.reset()
            for k in range(skip + timed):
                action = expert.select_action(obs)
                t0, c0 = time.perf_counter(), time.process_time()
                obs, _, terminated, truncated, _ = env.step(action)
                if k >= skip:
                    times.append(time.perf_counter() - t0)
                    cpu_times.append(time.process_time() - c0)
                if terminated or truncated:
                    obs, _ = env.reset(options={"init_state_id": (k + 1) % 50})
                    expert.reset()
        finally:
            env.close()
    return np.array(times), np.array(cpu_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="timed steps per suite")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps per suite (spread over its tasks)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--control-hz", type=float, default=20.0)
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    args = parser.parse_args()

    print(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}  image {args.image_size}x{args.image_size}  "
          f"control {args.control_hz:g} Hz  cpu: {platform.processor() or platform.machine()}  "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'suite':8s} {'median ms':>10s} {'p90 ms':>8s} {'steps/s':>8s} {'cpu median ms':>14s} {'n':>6s}")
    for suite in args.suites:
        wall, cpu = bench_suite(suite, args.steps, args.warmup, args.image_size, args.control_hz)
        wall, cpu = wall * 1e3, cpu * 1e3
        print(f"{suite:8s} {np.median(wall):10.2f} {np.percentile(wall, 90):8.2f} {1e3 / np.median(wall):8.0f} "
              f"{np.median(cpu):14.2f} {wall.size:6d}")


if __name__ == "__main__":
    main()
