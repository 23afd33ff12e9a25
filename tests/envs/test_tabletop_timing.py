"""Step cost: a loose bound on CPU time per step (both 128x128 images rendered).

CPU time of this process (all its threads, the software GL rasteriser's included) rather than wall
time, so that other jobs on the machine do not make it flaky; the 5 ms wall-clock figure comes from
scripts/bench_env_step.py on an idle machine.
"""

from __future__ import annotations

import time

import numpy as np
from vla_accel.envs import make_env


def test_step_cpu_time_median_under_20ms():
    env = make_env("long", 0)
    try:
        obs, _ = env.reset(options={"init_state_id": 0})
        expert = env.unwrapped.expert()
        expert.reset()
        times = []
        for k in range(80):
            action = expert.select_action(obs)
            t0 = time.process_time()
            obs, *_ = env.step(action)
            if k >= 10:  # warm-up: GL context creation, first draws
                times.append(time.process_time() - t0)
        assert np.median(times) < 0.020, f"median CPU time per step {1e3 * np.median(times):.1f} ms"
    finally:
        env.close()
