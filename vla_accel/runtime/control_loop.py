"""A fixed-rate control loop with an action-chunk queue and asynchronous inference.

    loop = ControlLoop(GymRobot(env), LocalChunkPolicy(policy), LoopConfig(control_hz=20))
    loop.reset(); report = loop.run(max_steps=300, stop=lambda: loop.robot.done)

    # the same loop against a policy served by `vla-accel serve`:
    loop = ControlLoop(GymRobot(env), WebsocketClientPolicy("127.0.0.1", 8000), LoopConfig(control_hz=20))

The robot side is any object with ``get_observation() -> obs`` and ``apply_action(action)``
(:class:`GymRobot` adapts our gymnasium envs); the policy side any object with ``reset()`` and
``infer(obs) -> {"actions": (H, A)}`` (openpi's call; :class:`LocalChunkPolicy` adapts an in-process
policy, ``vla_accel.runtime.client.WebsocketClientPolicy`` is a remote one).

One control step at tick t (period T = 1 / control_hz), as LeRobot's async inference and openpi's
action broker do it:
 1. if the inference in flight has finished, its chunk replaces the queue. The chunk was predicted
    from the observation of step s, so its action i belongs to step s + i: the first t - s actions are
    dropped (their time has passed). A chunk older than its length (``expired_chunks``; e.g. every
    late single-action OpenVLA chunk) keeps its last action only: it is still the newest plan;
 2. read the observation; if no inference is in flight and at most ``refill_at`` actions are queued,
    start the next inference on it in the background worker (``async_inference=False``: wait for it);
 3. execute the next queued action -- or, when the queue has run dry because inference is late, the
    STALE-ACTION RULE: ``stale_action="hold"`` (default) sends a zero-motion action (the six delta
    end-effector dims 0) with the last gripper command, so the arm stops where it is and keeps its
    grasp instead of repeating a delta blindly; ``"repeat"`` re-sends the last action (right for
    absolute-position action spaces). These steps count as ``hold_steps``;
 4. sleep until tick t + 1. A step that overruns its tick counts in ``overruns`` and the schedule is
    re-anchored (no burst of catch-up steps).
The first inference of an episode is waited for (there is nothing to execute before it).

Deadline accounting: an inference is LATE when its result arrives after the moment the queue it was
started on would run dry (start + queued_at_start * T; synchronous mode: start + T). Every executed
action records its age (t - s, steps between the observation it came from and its execution).

Time comes from an injectable ``clock()`` / ``sleep(dt)`` pair and the inference runs on an injectable
``worker`` (``submit(fn) -> job`` with ``done()``, ``result()``, ``started_at``, ``finished_at``), so
tests drive the loop on simulated time.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

STALE_RULES = ("hold", "repeat")


class Robot(Protocol):
    def get_observation(self) -> dict: ...

    def apply_action(self, action: np.ndarray) -> None: ...


class ChunkPolicy(Protocol):
    def reset(self) -> None: ...

    def infer(self, obs: dict) -> dict: ...


@dataclass(frozen=True)
class LoopConfig:
    control_hz: float = 20.0
    async_inference: bool = True
    refill_at: int = 1  # start the next inference when at most this many actions are queued
    stale_action: str = "hold"
    gripper_dims: tuple[int, ...] = (6,)  # kept from the last action by the "hold" rule
    max_chunk_actions: int | None = None  # execute at most this many actions of each chunk (None: all)

    def __post_init__(self) -> None:
        if not self.control_hz > 0:
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")
        if self.refill_at < 0:
            raise ValueError(f"refill_at must be >= 0, got {self.refill_at}")
        if self.stale_action not in STALE_RULES:
            raise ValueError(f"unknown stale_action {self.stale_action!r}; valid: {', '.join(STALE_RULES)}")
        if self.max_chunk_actions is not None and self.max_chunk_actions < 1:
            raise ValueError(f"max_chunk_actions must be >= 1 or None, got {self.max_chunk_actions}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_hz


# ------------------------------------------------------------------------------------------- workers
class _ThreadJob:
    def __init__(self, future: concurrent.futures.Future, times: dict) -> None:
        self._future, self._times = future, times

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> Any:
        return self._future.result()

    @property
    def started_at(self) -> float:
        return self._times["start"]

    @property
    def finished_at(self) -> float:
        return self._times["end"]


class ThreadWorker:
    """Runs one inference at a time on a background thread; times it with the loop's clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-accel-loop")

    def submit(self, fn: Callable[[], Any]) -> _ThreadJob:
        times = {"start": self.clock()}

        def job():
            try:
                return fn()
            finally:
                times["end"] = self.clock()

        return _ThreadJob(self._pool.submit(job), times)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# ------------------------------------------------------------------------------------------ adapters
class GymRobot:
    """Our gymnasium envs (vla_accel.envs) as a robot: the last observation, one env.step per action."""

    def __init__(self, env) -> None:
        self.env = env
        self.obs: dict | None = None
        self.done = False
        self.success = False
        self.n_steps = 0
        self.sum_reward = 0.0

    def reset(self, seed: int | None = None, init_state_id: int | None = None) -> dict:
        options = None if init_state_id is None else {"init_state_id": int(init_state_id)}
        self.obs, _ = self.env.reset(seed=seed, options=options)
        self.done, self.success, self.n_steps, self.sum_reward = False, False, 0, 0.0
        return self.obs

    def get_observation(self) -> dict:
        if self.obs is None:
            raise ValueError("GymRobot: call reset() before the first observation")
        return self.obs

    def apply_action(self, action: np.ndarray) -> None:
        if self.done:
            return  # the episode ended; the loop's stop condition ends the run
        self.obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        self.n_steps += 1
        self.sum_reward += float(reward)
        self.success = self.success or bool(info.get("is_success", False))
        self.done = bool(terminated or truncated)


class LocalChunkPolicy:
    """An in-process VLA policy (accelerated or not) behind ``infer`` (vla_accel.policies.call_styles.infer)."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def reset(self) -> None:
        self.policy.reset()

    def infer(self, obs: dict) -> dict:
        from vla_accel.policies.call_styles import infer

        return infer(self.policy, obs)


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class LoopReport:
    control_hz: float
    steps: int = 0
    wall_s: float = 0.0
    inferences: int = 0
    late_inferences: int = 0
    expired_chunks: int = 0  # chunks that arrived entirely out of date
    hold_steps: int = 0  # steps executed by the stale-action rule (queue dry)
    overruns: int = 0  # steps whose own work overran the tick
    latencies_s: list[float] = field(default_factory=list)  # per inference: start -> result
    action_ages: list[int] = field(default_factory=list)  # per queued action executed: t - s
    keep_ratios: list[float] = field(default_factory=list)  # per inference, when a budget controller runs

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_s) * 1e3
        ages = np.array(self.action_ages)
        pct = (lambda a, q: float(np.percentile(a, q)) if a.size else None)
        return {
            "control_hz": self.control_hz, "steps": self.steps, "wall_s": self.wall_s,
            "loop_hz": self.steps / self.wall_s if self.wall_s > 0 else None,
            "inferences": self.inferences, "late_inferences": self.late_inferences,
            "late_rate": self.late_inferences / self.inferences if self.inferences else 0.0,
            "expired_chunks": self.expired_chunks, "hold_steps": self.hold_steps,
            "hold_rate": self.hold_steps / self.steps if self.steps else 0.0, "overruns": self.overruns,
            "latency_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
                           "mean": float(lat.mean()) if lat.size else None},
            "action_age_steps": {"mean": float(ages.mean()) if ages.size else None,
                                 "max": int(ages.max()) if ages.size else None},
            "keep_ratio": self.keep_ratios[-1] if self.keep_ratios else None,
        }


class ControlLoop:
    def __init__(self, robot: Robot, policy: ChunkPolicy, config: LoopConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 worker=None, budget=None, set_keep_ratio: Callable[[float], Any] | None = None) -> None:
        """budget: an optional vla_accel.runtime.budget.KeepRatioController; set_keep_ratio(keep) applies its
        choice before each inference (e.g. ``functools.partial(vla_accel.runtime.budget.set_keep_ratio, policy)``
        or a WebsocketClientPolicy's ``set_keep_ratio``)."""
        if (budget is None) != (set_keep_ratio is None):
            raise ValueError("give budget and set_keep_ratio together")
        self.robot, self.policy = robot, policy
        self.config = config or LoopConfig()
        self.clock, self.sleep = clock, sleep
        self.worker = worker if worker is not None else ThreadWorker(clock)
        self.budget, self.set_keep_ratio = budget, set_keep_ratio
        self.report = LoopReport(self.config.control_hz)
        self._queue: deque[tuple[np.ndarray, int]] = deque()  # (action, step of its observation)
        self._pending = None  # (job, obs_step, deadline)
        self._last_action: np.ndarray | None = None
        self._step = 0  # control steps since reset

    def reset(self) -> None:
        """New episode: wait out an inference in flight (its result is dropped), clear the queue."""
        if self._pending is not None:
            try:
                self._pending[0].result()
            except Exception:
                pass
            self._pending = None
        self._queue.clear()
        self._last_action = None
        self._step = 0
        self.policy.reset()

    def close(self) -> None:
        self.reset()
        if hasattr(self.worker, "close"):
            self.worker.close()

    # ----------------------------------------------------------------------------------- inference
    def _launch(self, obs: dict) -> None:
        if self.budget is not None:
            self.set_keep_ratio(self.budget.keep)
            self.report.keep_ratios.append(self.budget.keep)
        cfg = self.config
        job = self.worker.submit(lambda: self.policy.infer(obs))
        slack = max(1, len(self._queue)) if cfg.async_inference else 1
        self._pending = (job, self._step, job.started_at + slack * cfg.period_s)

    def _collect(self) -> None:
        job, obs_step, deadline = self._pending
        self._pending = None
        out = job.result()  # re-raises an inference failure here, in the loop's thread
        latency = job.finished_at - job.started_at
        rep = self.report
        rep.inferences += 1
        rep.latencies_s.append(latency)
        rep.late_inferences += job.finished_at > deadline + 1e-9
        if self.budget is not None:
            self.budget.update(latency)
        chunk = np.asarray(out["actions"], dtype=np.float32)
        if chunk.ndim == 1:
            chunk = chunk[None]
        if self.config.max_chunk_actions is not None:
            chunk = chunk[: self.config.max_chunk_actions]
        age = self._step - obs_step  # actions 0..age-1 were meant for steps already executed
        if age >= len(chunk):  # entirely out of date: its last action is still the newest plan there is
            rep.expired_chunks += 1
        self._queue = deque((a, obs_step) for a in chunk[min(age, len(chunk) - 1):])

    def _hold_action(self) -> np.ndarray:
        last = self._last_action
        if self.config.stale_action == "repeat":
            return last.copy()
        hold = np.zeros_like(last)
        dims = list(self.config.gripper_dims)
        hold[dims] = last[dims]
        return hold

    # ---------------------------------------------------------------------------------------- run
    def step(self) -> np.ndarray:
        """One control step (without the wait for the next tick); returns the action executed."""
        cfg, rep = self.config, self.report
        if self._pending is not None and self._pending[0].done():
            self._collect()
        obs = self.robot.get_observation()
        if self._pending is None and len(self._queue) <= cfg.refill_at:
            self._launch(obs)
            if not cfg.async_inference or (self._last_action is None and not self._queue):
                self._pending[0].result()  # wait (synchronous mode, or the episode's first chunk)
                self._collect()
        if self._queue:
            action, obs_step = self._queue.popleft()
            rep.action_ages.append(self._step - obs_step)
        elif self._last_action is not None:
            action = self._hold_action()
            rep.hold_steps += 1
        else:  # the first chunk expired or was empty: nothing to hold yet
            raise RuntimeError("the policy gave no action for the first step of the episode")
        self.robot.apply_action(action)
        self._last_action = np.asarray(action, dtype=np.float32)
        self._step += 1
        rep.steps += 1
        return self._last_action

    def run(self, max_steps: int, stop: Callable[[], bool] | None = None) -> LoopReport:
        """Run up to ``max_steps`` steps at the configured rate (or until ``stop()`` is true)."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        period = self.config.period_s
        start = next_tick = self.clock()
        for _ in range(int(max_steps)):
            if stop is not None and stop():
                break
            self.step()
            next_tick += period
            now = self.clock()
            if now > next_tick:  # overran: count it and re-anchor instead of bursting to catch up
                self.report.overruns += 1
                next_tick = now
            else:
                self.sleep(next_tick - now)
        self.report.wall_s += self.clock() - start
        return self.report
