import json

import numpy as np
import pytest
from fixtures.fakes import FakeTabletopEnv, compose_config, with_expert_defaults
from fixtures.timing_fakes import SleepyPolicy

from vla_accel.harness.eval import evaluate
from vla_accel.harness.realtime import LatencyModel
from vla_accel.harness.results import read_episode_log
from vla_accel.harness.rollout import RolloutTiming, run_episode
from vla_accel.measure.timing import (
    StageTimer,
    count_deadline_misses,
    stage_summaries,
    summarize,
)
from vla_accel.measure.timing_report import timing_block, timing_table

TIMING_KEYS = {"control_hz", "n_calls", "n_steps", "warmup_calls", "latency_model", "latency_param",
               "latency_ms", "policy_hz", "loop_hz", "deadline_misses", "deadline_miss_rate",
               "tokens_kept", "flops_per_call", "realtime"}


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_stage_timer_records_stages_and_total_with_a_fake_clock():
    timer, clock = StageTimer(), FakeClock()
    timer._clock = clock
    with timer.call():
        with timer.stage("vision"):
            clock.t += 0.002
        with timer.stage("prefill"):
            clock.t += 0.010
        with timer.stage("prefill"):  # entered twice in one call: adds up
            clock.t += 0.001
        clock.t += 0.0005
    assert timer.n_calls == 1
    assert timer.last == pytest.approx({"vision": 2.0, "prefill": 11.0, "total": 13.5})
    with timer.stage("vision"):  # outside a call: not recorded
        clock.t += 1
    assert timer.last["vision"] == pytest.approx(2.0)


def test_nested_calls_count_once_and_a_disabled_timer_only_counts():
    timer = StageTimer()
    with timer.call(), timer.call():
        pass
    assert timer.n_calls == 1
    off = StageTimer(enabled=False)
    with off.call(), off.stage("prefill"):
        pass
    assert off.n_calls == 1 and off.last == {}


def test_module_level_stage_times_into_the_active_call_and_nests():
    from vla_accel.measure import timing

    timer, clock = StageTimer(), FakeClock()
    timer._clock = clock
    assert timing.stage("select") is timing._NULL  # no call running: a shared no-op
    with timer.call():
        with timer.stage("prefill"):
            clock.t += 0.004
            with timing.stage("select"):  # code without a reference to the timer (the runner)
                clock.t += 0.001
        with timer.stage("decode"):
            with timing.stage("select"):
                clock.t += 0.002
    assert timer.last == pytest.approx({"prefill": 5.0, "select": 3.0, "decode": 2.0, "total": 7.0})
    assert timing.stage("select") is timing._NULL  # the call ended: inactive again
    off = StageTimer(enabled=False)
    with off.call():
        assert timing.stage("select") is timing._NULL
    assert off.last == {}


def test_timing_table_shows_select_and_says_it_is_part_of_prefill():
    from rich.console import Console

    calls = [{"ms": {"vision": 1.0, "prefill": 5.0, "select": 2.0, "decode": 3.0, "total": 9.5},
              "latency_ms": 9.5} for _ in range(3)]
    block = timing_block([{"calls": calls, "n_steps": 3, "loop_s": 0.1}], control_hz=20,
                         latency_model="measured", latency_param=None, realtime=False)
    assert list(block["latency_ms"]) == ["vision", "prefill", "select", "decode", "total"]
    console = Console(width=200, record=True)
    console.print(timing_table(block))
    text = " ".join(console.export_text().split())  # the caption wraps
    assert "│ select │ 2.00 │" in text and "select is part of prefill / decode, not added to them" in text


def test_percentiles_and_summaries():
    s = summarize(range(1, 101))  # 1..100
    assert s == pytest.approx({"p50": 50.5, "p90": 90.1, "p99": 99.01, "mean": 50.5})
    assert summarize([]) is None
    out = stage_summaries([{"total": 1.0, "prefill": 0.5}, {"total": 3.0}])
    assert out["total"]["p50"] == 2.0 and out["prefill"]["mean"] == 0.5 and "vision" not in out
    assert list(out) == ["prefill", "total"]


def test_deadline_misses_count_calls_over_the_period():
    assert count_deadline_misses([10, 50, 50.01, 80], control_hz=20) == 2  # 50 ms period, equal is on time
    with pytest.raises(ValueError, match="control_hz"):
        count_deadline_misses([1], control_hz=0)


def test_rollout_times_inference_calls_and_the_timing_block_summarises_them():
    env = FakeTabletopEnv("spatial", 0)
    policy = SleepyPolicy(delays_ms=(0.0, 80.0))
    timing = RolloutTiming(control_hz=20.0)  # 50 ms period
    rec = run_episode(env, policy, init_state_id=0, seed=0, max_steps=4, timing=timing)
    assert rec.n_steps == 4 and len(rec.calls) == 4 and rec.n_stale_steps == 0
    assert [c["step"] for c in rec.calls] == [0, 1, 2, 3]
    slow = [c["ms"]["total"] for c in rec.calls[1::2]]
    assert all(x >= 80.0 for x in slow)
    assert all(c["ms"]["prefill"] <= c["ms"]["total"] for c in rec.calls)
    block = timing_block([{"calls": rec.calls, "n_steps": rec.n_steps, "loop_s": rec.loop_s}],
                         control_hz=20.0, latency_model="measured", latency_param=None, realtime=False,
                         warmup_calls=3)
    assert TIMING_KEYS <= set(block)
    assert block["n_calls"] == 4 and block["warmup_calls"] == 3 and block["n_steps"] == 4
    assert block["deadline_misses"] == 2 and block["deadline_miss_rate"] == 0.5
    assert set(block["latency_ms"]) == {"vision", "prefill", "total"}
    assert block["latency_ms"]["total"]["p99"] >= 80.0
    assert block["policy_hz"] == pytest.approx(1000 / block["latency_ms"]["total"]["mean"])
    assert block["tokens_kept"] is None and block["flops_per_call"] is None  # not a VLA
    assert block["keep_ratio"] is None
    timing_table(block)  # renders


def test_the_timing_block_summarises_a_keep_ratio_that_changes_per_step():
    """An adaptive budget: 16 of 16 tokens at fine motion, 4 of 16 at coarse motion."""
    calls = [{"step": i, "ms": {"total": 10.0}, "latency_ms": 10.0, "tokens_kept": k, "tokens_of": 16}
             for i, k in enumerate([16, 4, 4, 16, 4])]
    block = timing_block([{"calls": calls, "n_steps": 5, "loop_s": 1.0}], control_hz=20.0,
                         latency_model="measured", latency_param=None, realtime=False)
    assert block["keep_ratio"] == {"mean": pytest.approx((2 * 1.0 + 3 * 0.25) / 5), "min": 0.25, "max": 1.0,
                                   "pruned_share": pytest.approx(0.6)}  # fmt: skip
    assert block["tokens_kept"] == {"mean": pytest.approx(8.8), "of": 16}
    timing_table(block)  # renders the min / max row


def test_warm_up_makes_untimed_inference_calls_before_the_episode():
    from vla_accel.harness.rollout import warm_up

    env = FakeTabletopEnv("spatial", 0)
    policy = SleepyPolicy(chunk=4)
    assert warm_up(env, policy, 3) == 3 and policy.n_inference == 3  # reset before each: 3 inferences
    rec = run_episode(env, policy, init_state_id=0, seed=0, max_steps=2)
    assert len(rec.calls) == 1 and policy.n_inference == 4


def test_queue_pops_of_a_chunked_policy_are_not_inference_calls():
    env = FakeTabletopEnv("spatial", 0)
    policy = SleepyPolicy(chunk=4)
    rec = run_episode(env, policy, init_state_id=3, seed=0, max_steps=10)
    assert rec.n_steps == 10 and policy.n_inference == 3 and [c["step"] for c in rec.calls] == [0, 4, 8]


def test_fixed_latency_model_decides_deadline_misses():
    env = FakeTabletopEnv("spatial", 0)
    timing = RolloutTiming(control_hz=20.0, latency_model=LatencyModel("fixed", 60.0))
    rec = run_episode(env, SleepyPolicy(), init_state_id=3, seed=0, max_steps=4, timing=timing)
    assert [c["latency_ms"] for c in rec.calls] == [60.0] * 4
    block = timing_block([{"calls": rec.calls, "n_steps": 4, "loop_s": rec.loop_s}], control_hz=20.0,
                         latency_model="fixed", latency_param=60.0, realtime=False)
    assert block["deadline_misses"] == 4 and block["modelled_latency_ms"]["p50"] == 60.0


def _eval_cfg(*overrides):
    return compose_config("eval", with_expert_defaults(["eval.progress=false", "env.image_size=16", *overrides]))


def test_eval_writes_the_timing_block_and_prints_its_table(fake_envs, tmp_path, capsys):
    from rich.console import Console

    info = evaluate(_eval_cfg("eval.n_episodes=2", "env.suite=[spatial,goal]", "env.task_ids=[0]",
                              "eval.warmup_calls=1"), tmp_path, Console(width=150))
    block = json.loads((tmp_path / "eval_info.json").read_text())["timing"]
    assert block == json.loads(json.dumps(info["timing"]))
    assert TIMING_KEYS <= set(block)
    n_steps = sum(e["n_steps"] for e in info["per_episode"])
    # the expert is bound to its env: built, and warmed up (1 call), once per task
    assert block["n_steps"] == n_steps and block["n_calls"] == n_steps and block["warmup_calls"] == 2
    assert block["control_hz"] == 20.0 and block["latency_model"] == "measured" and not block["realtime"]
    assert block["loop_hz"] > 0 and block["latency_ms"]["total"]["p50"] > 0
    assert set(info["timing_per_group"]) == {"spatial", "goal"}
    out = capsys.readouterr().out
    assert "timing: policy=expert" in out and "deadline misses" in out and "2 warm-up calls excluded" in out


def test_resume_keeps_the_timing_of_finished_episodes(fake_envs, tmp_path):
    cfg = _eval_cfg("eval.n_episodes=3", "env.task_ids=[0]", "eval.warmup_calls=0")
    first = evaluate(cfg, tmp_path)
    log = tmp_path / "eval_episodes.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n")  # as if killed after two episodes
    resumed = evaluate(_eval_cfg("eval.n_episodes=3", "env.task_ids=[0]", "eval.warmup_calls=0",
                                 "eval.resume=true"), tmp_path)
    assert resumed["timing"]["n_calls"] == first["timing"]["n_calls"] == resumed["timing"]["n_steps"]
    assert [len(r["calls"]) for r in read_episode_log(log)] == [e["n_steps"] for e in first["per_episode"]]


@pytest.mark.parametrize("override, match", [
    ("eval.latency_model=psychic", "latency_model"),
    ("eval.latency_model=fixed", "latency_ms"),
    ("eval.control_hz=-5", "control_hz"),
    ("eval.warmup_calls=-1", "warmup_calls"),
    ("eval.hold_gripper=3", "hold_gripper"),
])
def test_bad_timing_config_is_a_clear_value_error(fake_envs, tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        evaluate(_eval_cfg(override), tmp_path)


def test_timing_block_without_calls_is_empty_not_an_error():
    block = timing_block([{"n_steps": 3, "loop_s": 0.1}], control_hz=20, latency_model="measured",
                         latency_param=None, realtime=True)
    assert block["n_calls"] == 0 and block["latency_ms"] == {} and block["policy_hz"] is None
    assert np.isclose(block["loop_hz"], 30.0)


# ---------------------------------------------------------------- the VLA policies' stage timers


def test_vla_policies_time_their_stages_and_count_tokens_and_flops():
    from fixtures.tiny_models import tiny_cogact, tiny_openvla

    from vla_accel.accel.accelerate import accelerate
    from vla_accel.accel.flops import LLMShape, accelerated_prefill_flops

    env = FakeTabletopEnv("spatial", 0, image_size=32)
    vla = accelerate(tiny_openvla(), "fastv", keep_ratio=0.25)
    rec = run_episode(env, vla, init_state_id=3, seed=0, max_steps=2, timing=RolloutTiming(warmup_calls=0))
    assert len(rec.calls) == 2
    call = rec.calls[-1]
    assert set(call["ms"]) == {"vision", "prefill", "select", "decode", "total"}
    assert sum(call["ms"][s] for s in ("vision", "prefill", "decode")) <= call["ms"]["total"]
    assert 0 < call["ms"]["select"] <= call["ms"]["prefill"]  # FastV's probe + top-k, inside prefill
    assert call["tokens_kept"] == 4 and call["tokens_of"] == 16
    ref = accelerated_prefill_flops(LLMShape.from_config(vla.language_model.config), vla.accel_config,
                                    vla.runner.stats.num_tokens, 16)
    assert call["flops"]["prefill"] == ref["accelerated"]
    assert call["flops"]["total"] == pytest.approx(sum(v for k, v in call["flops"].items() if k != "total"))

    cogact = tiny_cogact()  # chunk of 8 executed actions: one inference call per 8 steps
    rec = run_episode(env, cogact, init_state_id=3, seed=0, max_steps=9, timing=RolloutTiming(warmup_calls=0))
    assert [c["step"] for c in rec.calls] == [0, 8]
    assert set(rec.calls[0]["ms"]) == {"vision", "prefill", "action_head", "total"}
    assert rec.calls[0]["flops"]["action_head"] > 0 and "decode" not in rec.calls[0]["flops"]


def test_a_cuda_timer_synchronises_at_every_boundary(monkeypatch):
    from vla_accel.measure import timing

    syncs = []
    monkeypatch.setattr(timing, "cuda_sync", lambda: syncs.append(1))
    timer = StageTimer(cuda=True)
    with timer.call(), timer.stage("prefill"):
        pass
    assert len(syncs) == 4  # call start, stage start, stage end, call end
    StageTimer(cuda=False).call().__enter__()
    assert len(syncs) == 4
