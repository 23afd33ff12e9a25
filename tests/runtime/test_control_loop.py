"""The fixed-rate control loop on simulated time: chunk alignment, async inference, deadline accounting,
the stale-action rule, and the budget controller in the loop."""

from __future__ import annotations

import numpy as np
import pytest

from vla_accel.runtime.budget import BudgetConfig, KeepRatioController
from vla_accel.runtime.control_loop import ControlLoop, LoopConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        assert dt >= 0
        self.now += dt


class SimulatedJob:
    def __init__(self, clock, value, started, finished) -> None:
        self.clock, self.value, self.started_at, self.finished_at = clock, value, started, finished

    def done(self) -> bool:
        return self.clock.now >= self.finished_at - 1e-12

    def result(self):
        self.clock.now = max(self.clock.now, self.finished_at)  # waiting for it takes the time it takes
        return self.value


class SimulatedWorker:
    """Runs the call at once but makes its result available `latency_s()` later on the fake clock."""

    def __init__(self, clock: FakeClock, latency_s) -> None:
        self.clock, self.latency_s = clock, latency_s

    def submit(self, fn):
        start = self.clock.now
        return SimulatedJob(self.clock, fn(), start, start + self.latency_s())


T0 = 100


class StepRobot:
    """Its observation is the step count (from T0, so no real action is all zeros); records the actions."""

    def __init__(self) -> None:
        self.t = T0
        self.applied: list[np.ndarray] = []

    def get_observation(self) -> dict:
        return {"t": self.t}

    def apply_action(self, action) -> None:
        self.applied.append(np.array(action))
        self.t += 1


class CountingPolicy:
    """A chunk of H actions for the observation of step t: action i = [t + i] * 6 + [gripper]."""

    def __init__(self, horizon: int, gripper: float = 1.0) -> None:
        self.horizon, self.gripper, self.resets, self.calls = horizon, gripper, 0, 0

    def reset(self) -> None:
        self.resets += 1

    def infer(self, obs: dict) -> dict:
        self.calls += 1
        t = obs["t"]
        actions = np.zeros((self.horizon, 7), np.float32)
        actions[:, :6] = (t + np.arange(self.horizon))[:, None]
        actions[:, 6] = self.gripper
        return {"actions": actions}


def make_loop(latency_s: float, horizon: int, **cfg):
    clock = FakeClock()
    robot, policy = StepRobot(), CountingPolicy(horizon)
    loop = ControlLoop(robot, policy, LoopConfig(control_hz=20.0, **cfg), clock=clock, sleep=clock.sleep,
                       worker=SimulatedWorker(clock, lambda: latency_s))
    loop.reset()
    return loop, robot, policy, clock


def test_fast_async_inference_executes_every_action_at_its_own_step():
    loop, robot, policy, clock = make_loop(latency_s=0.03, horizon=4)  # 30 ms < one 50 ms period
    rep = loop.run(40)
    executed = np.array([a[0] for a in robot.applied])
    # action i of the chunk predicted at step s is meant for step s + i: it is executed exactly then
    np.testing.assert_array_equal(executed, T0 + np.arange(40))
    s = rep.summary()
    assert s["hold_steps"] == 0 and s["late_inferences"] == 0 and s["overruns"] == 0
    assert s["expired_chunks"] == 0
    assert abs(clock.now - 40 * 0.05) < 1e-9  # the loop kept its rate on the fake clock
    assert s["latency_ms"]["p50"] == pytest.approx(30.0)
    assert policy.resets == 1


def test_slow_inference_runs_the_queue_dry_and_holds_zero_motion_with_the_gripper():
    # 180 ms per inference = 3.6 periods; a chunk of 5 arrives 4 steps after its observation with 1
    # action still ahead, which starts the next inference: 3 steps per cycle run on the stale-action rule
    loop, robot, policy, clock = make_loop(latency_s=0.18, horizon=5)
    rep = loop.run(60)
    s = rep.summary()
    assert s["hold_steps"] > 0
    assert s["late_inferences"] == s["inferences"]  # 180 ms > the time any queue lasted (<= 1 action)
    holds = [a for a in robot.applied if np.all(a[:6] == 0) and a[6] == 1.0]
    assert len(holds) == s["hold_steps"]  # the stale-action rule: zero motion, last gripper command
    # executed queued actions never run ahead of time: the value is the step it was meant for
    fresh = [(t, a) for t, a in enumerate(robot.applied) if a[0] != 0]
    assert all(a[0] == T0 + t for t, a in fresh)
    assert s["action_age_steps"]["max"] == 4 and s["expired_chunks"] == 0
    assert s["hold_steps"] == pytest.approx(60 * 3 / 4, abs=4)
    assert s["overruns"] == 1  # async: only the first step waited (for the episode's first chunk)


def test_repeat_rule_resends_the_last_action():
    loop, robot, _, _ = make_loop(latency_s=0.18, horizon=3, stale_action="repeat")
    rep = loop.run(30)
    assert rep.hold_steps > 0
    repeats = sum(np.array_equal(a, b) for a, b in zip(robot.applied, robot.applied[1:]))
    assert repeats == rep.hold_steps


def test_synchronous_mode_waits_and_counts_overruns():
    loop, robot, policy, clock = make_loop(latency_s=0.08, horizon=1, async_inference=False)
    rep = loop.run(10)
    s = rep.summary()
    assert s["hold_steps"] == 0 and policy.calls == 10  # one inference per step, each waited for
    assert s["late_inferences"] == 10 and s["overruns"] == 10  # 80 ms > 50 ms period every time
    assert np.array([a[0] for a in robot.applied]).tolist() == list(range(T0, T0 + 10))
    assert clock.now == pytest.approx(10 * 0.08)  # re-anchored: no catch-up burst, no extra sleep


def test_single_action_policy_async_keeps_the_newest_action_of_a_late_chunk():
    loop, robot, _, _ = make_loop(latency_s=0.03, horizon=1)  # OpenVLA-style: one action per chunk
    rep = loop.run(20)
    s = rep.summary()
    assert s["expired_chunks"] == s["inferences"] - 1  # each arrives one step after its observation
    assert s["hold_steps"] <= 1 and s["action_age_steps"]["max"] <= 2


def test_reset_waits_for_the_inference_in_flight_and_clears_the_queue():
    loop, robot, policy, _ = make_loop(latency_s=0.12, horizon=8)
    loop.run(7)
    assert loop._pending is not None or loop._queue
    loop.reset()
    assert loop._pending is None and not loop._queue and policy.resets == 2


def test_bad_loop_config_is_rejected():
    with pytest.raises(ValueError, match="stale_action"):
        LoopConfig(stale_action="freeze")
    with pytest.raises(ValueError, match="control_hz"):
        LoopConfig(control_hz=0)


class KeepDependentPolicy(CountingPolicy):
    """Latency is a known affine function of the keep ratio the loop sets before each call."""

    def __init__(self) -> None:
        super().__init__(horizon=4)
        self.keep = 1.0

    def latency_s(self) -> float:
        return 0.02 + 0.16 * self.keep  # 180 ms at keep 1, 40 ms at keep 0.125

    def set_keep(self, keep: float) -> None:
        self.keep = keep


def test_budget_controller_in_the_loop_settles_on_the_largest_keep_that_meets_the_deadline():
    clock = FakeClock()
    policy = KeepDependentPolicy()
    # one inference per 2 control periods at 20 Hz -> 10 Hz inference target, 90 ms budget with margin 0.9
    budget = KeepRatioController(BudgetConfig(target_hz=10.0, min_keep=0.125, max_keep=1.0, margin=0.9))
    loop = ControlLoop(StepRobot(), policy, LoopConfig(control_hz=20.0, refill_at=2), clock=clock,
                       sleep=clock.sleep, worker=SimulatedWorker(clock, policy.latency_s),
                       budget=budget, set_keep_ratio=policy.set_keep)
    loop.reset()
    rep = loop.run(200)
    keep = budget.report()["keep_ratio"]
    # 0.02 + 0.16 k <= 0.09 -> k <= 0.4375; with 5% hysteresis on the way up: k <= 0.409 -> grid 0.4
    assert 0.375 <= keep <= 0.4375
    assert rep.keep_ratios[-20:] == [keep] * 20  # settled
    assert rep.summary()["late_inferences"] <= 3  # only while it was still at high keep


def test_real_time_loop_drives_a_simulated_suite_with_an_accelerated_policy():
    import torch
    from fixtures.tiny_models import tiny_cogact

    import vla_accel.envs as envs
    from vla_accel.accel.accelerate import accelerate
    from vla_accel.runtime.control_loop import GymRobot, LocalChunkPolicy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is slower with threads on a shared 2-core machine
    policy = accelerate(tiny_cogact(), "fastv", keep_ratio=0.5, prune_layer=1)
    env = envs.make_env("spatial", 0, image_size=32)
    try:
        robot = GymRobot(env)
        robot.reset(seed=0, init_state_id=0)
        loop = ControlLoop(robot, LocalChunkPolicy(policy), LoopConfig(control_hz=20.0, refill_at=4))
        loop.reset()
        rep = loop.run(30, stop=lambda: robot.done).summary()
        loop.close()
    finally:
        env.close()
        torch.set_num_threads(threads)
    assert robot.n_steps == rep["steps"] == 30
    assert rep["inferences"] >= 2 and rep["latency_ms"]["p50"] > 0
    assert rep["overruns"] <= 2  # the first step waits for the first chunk; the rest keep the tick
    assert rep["wall_s"] >= 29 / 20.0  # it kept (at most) the 20 Hz rate
