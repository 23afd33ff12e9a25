"""Fake policies with known latencies for the timing / real-time tests."""

from __future__ import annotations

import time

import numpy as np

from vla_accel.timing import StageTimer


class SleepyPolicy:
    """Single-action policy: inference call j sleeps delays_ms[j % len] ms (as "prefill") and returns
    [0.1, j / 100, 0, 0, 0, 0, +1]; it records the observation's state[0] it was called with."""

    def __init__(self, delays_ms=(0.0,), chunk: int = 1) -> None:
        self.delays_ms, self.chunk = list(delays_ms), chunk
        self.timer = StageTimer()
        self.n_inference = 0
        self.seen: list[float] = []
        self.queue: list[np.ndarray] = []

    @property
    def last_timing(self) -> dict:
        return self.timer.last

    def reset(self) -> None:
        self.queue.clear()

    def _infer(self, obs) -> list[np.ndarray]:
        with self.timer.call():
            with self.timer.stage("vision"):
                pass
            with self.timer.stage("prefill"):
                delay = self.delays_ms[self.n_inference % len(self.delays_ms)]
                if delay:
                    time.sleep(delay / 1e3)
        j = self.n_inference
        self.n_inference += 1
        self.seen.append(float(obs["state"][0]))
        return [np.array([0.1, j / 100, k / 100, 0, 0, 0, 1.0], np.float32) for k in range(self.chunk)]

    def select_action(self, obs) -> np.ndarray:
        if not self.queue:
            self.queue.extend(self._infer(obs))
        return self.queue.pop(0)

    def predict_action_chunk(self, obs):
        return np.stack(self._infer(obs))[None]
