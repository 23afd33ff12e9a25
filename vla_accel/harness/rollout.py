"""One episode of a policy in an env: the control loop every evaluation runs.

reset, then per control step: (if the policy is free) ``select_action`` on the step's observation,
then ``env.step`` with the action the scheduler says runs now, until the env ends the episode.
In the synchronous loop (``realtime=False``) that is this step's own action; in real-time mode
(``vla_accel.harness.realtime``) the env keeps stepping while the policy computes.

Each ``select_action`` that ran inference is one timed call (its wall time, the policy's per-stage
``last_timing``, tokens kept and analytic FLOPs); a chunked policy's queue pops are not inference
calls. A policy with a ``timer`` (``vla_accel.measure.timing.StageTimer``) says which calls ran inference
(its ``n_calls`` went up); for any other policy (the scripted expert) every call counts.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from vla_accel.harness.realtime import ActionScheduler, LatencyModel, hold_action
from vla_accel.harness.video import side_by_side


@dataclass
class EpisodeRecord:
    """What one episode produced. `success` is True if info["is_success"] held at any step."""

    success: bool
    sum_reward: float
    max_reward: float
    n_steps: int
    first_success_step: int | None = None  # 1-based step at which success was first reported
    frames: list[np.ndarray] | None = None  # (H, 2W, 3) uint8 each, when recording video
    calls: list[dict] = field(default_factory=list)  # one record per inference call (see timed_call)
    n_stale_steps: int = 0  # steps that executed an action not delivered at that step (incl. hold)
    n_hold_steps: int = 0  # steps before the episode's first action arrived (real-time mode)
    loop_s: float = 0.0  # wall time of the control loop (policy + env), for loop Hz


@dataclass
class RolloutTiming:
    """How the loop times and schedules the policy (shared by the episodes of one run)."""

    control_hz: float = 20.0
    realtime: bool = False
    latency_model: LatencyModel = field(default_factory=LatencyModel)
    hold_gripper: float = -1.0
    warmup_calls: int = 0  # untimed inference calls `warm_up` makes before the first episode
    accounting: bool = True  # tokens kept and analytic FLOPs per call (vla_accel.accel.call_accounting)

    def __post_init__(self) -> None:
        if not isinstance(self.warmup_calls, int) or self.warmup_calls < 0:
            raise ValueError(f"eval.warmup_calls must be an integer >= 0, got {self.warmup_calls!r}")
        hold_action(self.hold_gripper)  # validates
        ActionScheduler(self.control_hz, hold_action(self.hold_gripper))  # validates control_hz


def seed_everything(seed: int) -> None:
    """Seed the global RNGs a stochastic policy may draw from (python, numpy, torch if loaded)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def timed_call(policy, obs: dict, timing: RolloutTiming, step: int) -> tuple[np.ndarray, dict | None]:
    """policy.select_action(obs) -> (action, call record or None when it ran no inference).

    Record: {"step", "ms": {stage: ms, "total"}, "latency_ms" (as the latency model charges it), and
    when known "tokens_kept", "tokens_of", "flops" ({stage: FLOPs})}. "total" is the policy's own stage
    timer's call time (CUDA-synchronised on CUDA); a policy without a timer (the scripted expert) is
    timed here, around select_action.
    """
    timer = getattr(policy, "timer", None)
    if timer is None:
        t0 = time.perf_counter()
        action = policy.select_action(obs)
        ms = {"total": (time.perf_counter() - t0) * 1e3}
    else:
        before = timer.n_calls
        action = policy.select_action(obs)
        if timer.n_calls == before:
            return action, None  # a queue pop: no inference ran
        ms = {k: float(v) for k, v in policy.last_timing.items()}
    record = {"step": step, "ms": ms, "latency_ms": timing.latency_model(ms["total"])}
    if timing.accounting:
        from vla_accel.accel.call_accounting import call_accounting

        record.update(call_accounting(policy))
    return action, record


def warm_up(env, policy, n_calls: int, *, init_state_id: int = 0, seed: int = 0) -> int:
    """`n_calls` untimed inference calls on the first observation of an episode, as a deployment warms
    its model up before the robot moves (one-time allocation and kernel selection would otherwise land
    in the first episode's latencies, and in real-time mode hold the robot still for seconds).
    The policy is reset before every call (so a chunked policy infers each time) and after."""
    if n_calls == 0:
        return 0
    obs, _ = env.reset(seed=seed, options={"init_state_id": int(init_state_id)})
    for _ in range(n_calls):
        policy.reset()
        policy.select_action(obs)
    policy.reset()
    return n_calls


def run_episode(
    env,
    policy,
    *,
    init_state_id: int,
    seed: int,
    max_steps: int | None = None,
    record_video: bool = False,
    timing: RolloutTiming | None = None,
) -> EpisodeRecord:
    """Roll `policy` out from init state `init_state_id` until terminated, truncated or `max_steps`.

    `max_steps` is a safety cap on top of the env's own truncation (None = trust the env).
    `timing`: control rate, real-time mode and latency model (default: synchronous, 20 Hz).
    """
    timing = timing if timing is not None else RolloutTiming()
    seed_everything(seed)
    policy.reset()
    obs, info = env.reset(seed=seed, options={"init_state_id": int(init_state_id)})
    frames = [side_by_side(obs)] if record_video else None
    sum_reward, max_reward = 0.0, -np.inf
    first_success_step = None
    n_steps = n_stale = n_hold = 0
    calls: list[dict] = []
    clock = ActionScheduler(timing.control_hz, hold_action(timing.hold_gripper), realtime=timing.realtime)
    start = time.perf_counter()
    while max_steps is None or n_steps < max_steps:
        clock.deliver(n_steps)
        if clock.idle:
            action, record = timed_call(policy, obs, timing, n_steps)
            clock.submit(n_steps, action, record["latency_ms"] if record is not None else 0.0)
            if record is not None:
                calls.append(record)
        n_stale += not clock.fresh
        n_hold += clock.holding
        obs, reward, terminated, truncated, info = env.step(clock.current)
        n_steps += 1
        sum_reward += float(reward)
        max_reward = max(max_reward, float(reward))
        if first_success_step is None and bool(info["is_success"]):
            first_success_step = n_steps
        if frames is not None:
            frames.append(side_by_side(obs))
        if terminated or truncated:
            break
    return EpisodeRecord(
        success=first_success_step is not None,
        sum_reward=sum_reward,
        max_reward=float(max_reward) if n_steps else 0.0,
        n_steps=n_steps,
        first_success_step=first_success_step,
        frames=frames,
        calls=calls,
        n_stale_steps=n_stale,
        n_hold_steps=n_hold,
        loop_s=time.perf_counter() - start,
    )
