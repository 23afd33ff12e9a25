import numpy as np
import pytest
from fixtures.fakes import FakeTabletopEnv
from fixtures.timing_fakes import SleepyPolicy

from vla_accel.harness.realtime import ActionScheduler, LatencyModel, delay_steps, hold_action
from vla_accel.harness.rollout import RolloutTiming, run_episode

HOLD = [0, 0, 0, 0, 0, 0, -1]


def _run(policy, latency_ms, steps=12, hz=20.0, realtime=True):
    env = FakeTabletopEnv("spatial", 0)
    timing = RolloutTiming(control_hz=hz, realtime=realtime, latency_model=LatencyModel("fixed", latency_ms))
    rec = run_episode(env, policy, init_state_id=3, seed=0, max_steps=steps, timing=timing)
    return rec, np.stack(env.actions_seen)


def test_delay_is_ceil_of_latency_over_period():
    assert [delay_steps(x, 50.0) for x in (0, 1, 49.9, 50, 50.000000001, 50.1, 100, 149)] == [0, 1, 1, 1, 1, 2, 2, 3]


def test_fixed_latency_executes_the_stale_action_for_the_right_steps():
    # 120 ms at 20 Hz: d = ceil(120 / 50) = 3. Call j starts at step 3j on obs_3j, applies at 3(j+1).
    policy = SleepyPolicy()
    rec, actions = _run(policy, 120.0)
    assert rec.n_steps == 12 and [c["step"] for c in rec.calls] == [0, 3, 6, 9]
    np.testing.assert_array_equal(actions[:3], [HOLD] * 3)  # before the first action: hold
    call_ix = np.round(actions[3:, 1] * 100).astype(int)
    assert call_ix.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # the observation each call saw is the one from when it started (state[0] = summed x-actions)
    assert policy.seen == pytest.approx([0.0, 0.0, 0.1 * 3, 0.1 * 6])
    assert rec.n_hold_steps == 3
    assert rec.n_stale_steps == 3 + 3 * 2  # hold steps + two repeats per delivered action


def test_zero_latency_realtime_equals_the_synchronous_loop():
    _, rt = _run(SleepyPolicy(), 0.0)
    _, sync = _run(SleepyPolicy(), 120.0, realtime=False)  # sync ignores the latency for scheduling
    np.testing.assert_array_equal(rt, sync)
    assert np.round(sync[:, 1] * 100).astype(int).tolist() == list(range(12))


def test_latency_under_one_period_lags_one_step_without_stale_steps():
    rec, actions = _run(SleepyPolicy(), 30.0, steps=5)
    np.testing.assert_array_equal(actions[0], HOLD)
    assert np.round(actions[1:, 1] * 100).astype(int).tolist() == [0, 1, 2, 3]
    assert rec.n_stale_steps == 1 == rec.n_hold_steps


def test_chunked_policy_replays_its_chunk_then_holds_the_last_action_while_computing():
    # chunk of 4, 70 ms at 20 Hz: d = 2. Inference at step 0 -> chunk 0 applies at steps 2..5; its pops
    # are zero-latency calls, one per step; inference on obs_5 at step 5 -> chunk 1 from step 7.
    policy = SleepyPolicy(chunk=4)
    rec, actions = _run(policy, 70.0, steps=12)
    assert [c["step"] for c in rec.calls] == [0, 5, 10]
    np.testing.assert_array_equal(actions[:2], [HOLD] * 2)
    chunk_and_pos = [(round(a[1] * 100), round(a[2] * 100)) for a in actions[2:]]
    assert chunk_and_pos == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (1, 3)]
    assert rec.n_stale_steps == 2 + 1 + 1


def test_realtime_with_fixed_latency_is_reproducible():
    _, a = _run(SleepyPolicy(delays_ms=(0, 5)), 80.0)
    _, b = _run(SleepyPolicy(delays_ms=(0, 5)), 80.0)
    np.testing.assert_array_equal(a, b)


def test_scaled_and_measured_models():
    assert LatencyModel("scaled", 0.25)(40.0) == 10.0
    assert LatencyModel("measured")(7.5) == 7.5
    # measured: a 60 ms sleep at 20 Hz is late by a period -> d = 2
    policy = SleepyPolicy(delays_ms=(60.0,))
    env = FakeTabletopEnv("spatial", 0)
    rec = run_episode(env, policy, init_state_id=3, seed=0, max_steps=12,
                      timing=RolloutTiming(control_hz=20.0, realtime=True))
    first = rec.calls[0]["latency_ms"]
    assert first >= 60.0 and first == rec.calls[0]["ms"]["total"]
    d = delay_steps(first, 50.0)  # 2, unless a busy machine overslept by 40 ms or more
    assert d >= 2 and rec.calls[1]["step"] == d and rec.n_hold_steps == d


@pytest.mark.parametrize("kind, param, match", [
    ("psychic", None, "valid: measured, fixed, scaled"), ("fixed", None, "latency_ms"),
    ("scaled", -1.0, "latency_scale"), ("measured", 3.0, "no parameter")])
def test_bad_latency_models(kind, param, match):
    with pytest.raises(ValueError, match=match):
        LatencyModel(kind, param)


def test_hold_action_and_scheduler_bookkeeping():
    np.testing.assert_array_equal(hold_action(1.0), [0, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="hold_gripper"):
        hold_action(2.0)
    s = ActionScheduler(20.0, hold_action())
    s.deliver(0)
    assert s.idle and s.holding and not s.fresh
    assert s.submit(0, np.ones(7), 100.0) == 2 and not s.idle
    s.deliver(1)
    assert not s.fresh and s.holding
    s.deliver(2)
    assert s.fresh and not s.holding and s.idle
    assert s.submit(2, np.zeros(7), 0.0) == 3  # one new action per step
