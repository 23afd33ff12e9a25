import json

import imageio.v2 as imageio
import numpy as np
import pytest
from fixtures.fakes import (FAILING_INIT_STATES, MAX_STEPS, N_TASKS, FakeTabletopEnv, compose_config, with_expert_defaults,
                   steps_to_success)

from vla_accel.accel.from_hydra import accel_config
from vla_accel.harness.eval import evaluate
from vla_accel.policies import POLICY_REGISTRY, PolicySpec, make_policy
from vla_accel.harness.results import EPISODE_KEYS, read_episode_log
from vla_accel.harness.rollout import run_episode
from vla_accel.measure.stats import wilson_interval


def _eval_cfg(*overrides):
    return compose_config("eval", with_expert_defaults(["eval.progress=false", "env.image_size=16", *overrides]))


# ---------------------------------------------------------------- run_episode


def test_run_episode_succeeds_at_the_known_step_and_resets_the_policy():
    env = FakeTabletopEnv("spatial", task_id=1)
    policy = make_policy({"type": "expert"}, env)
    rec = run_episode(env, policy, init_state_id=1, seed=7)
    assert rec.success and rec.first_success_step == steps_to_success(1, 1) == rec.n_steps
    assert rec.sum_reward == 1.0 and rec.max_reward == 1.0
    assert policy.expert.n_resets == 1
    run_episode(env, policy, init_state_id=0, seed=8)
    assert policy.expert.n_resets == 2


def test_run_episode_failure_runs_to_truncation():
    env = FakeTabletopEnv("spatial", 0)
    rec = run_episode(env, make_policy({"type": "expert"}, env), init_state_id=3, seed=0)
    assert not rec.success and rec.n_steps == MAX_STEPS and rec.sum_reward == 0.0
    assert rec.first_success_step is None


def test_success_counts_if_reached_at_any_step():
    # Success holds at one step only and the env does not terminate on it.
    env = FakeTabletopEnv("spatial", 0, terminate_on_success=False, transient_success=True)
    rec = run_episode(env, make_policy({"type": "expert"}, env), init_state_id=0, seed=0)
    assert rec.success and rec.first_success_step == steps_to_success(0, 0)
    assert rec.n_steps == MAX_STEPS  # ran on to truncation; success was not the last step


def test_max_steps_caps_the_episode_and_video_frames_are_side_by_side():
    env = FakeTabletopEnv("spatial", 2, image_size=16)
    rec = run_episode(env, make_policy({"type": "expert"}, env), init_state_id=0, seed=0,
                      max_steps=2, record_video=True)
    assert rec.n_steps == 2 and not rec.success
    assert len(rec.frames) == 3 and rec.frames[0].shape == (16, 32, 3)


# ---------------------------------------------------------------- evaluate


def test_evaluate_writes_eval_info_in_the_interface_shape(fake_envs, tmp_path):
    cfg = _eval_cfg("eval.n_episodes=4")
    info = evaluate(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "eval_info.json").read_text())
    assert on_disk == json.loads(json.dumps(info))
    assert set(on_disk) == {"per_episode", "per_task", "per_group", "overall", "config", "timing"}

    eps = on_disk["per_episode"]
    assert len(eps) == N_TASKS * 4
    assert all(set(e) == set(EPISODE_KEYS) for e in eps)
    assert [e["episode_ix"] for e in eps] == list(range(len(eps)))
    assert [e["init_state_id"] for e in eps[:4]] == [0, 1, 2, 3]
    assert [e["seed"] for e in eps[:4]] == [0, 1, 2, 3]
    for e in eps:
        expected = e["init_state_id"] not in FAILING_INIT_STATES
        assert e["success"] is expected
        assert e["n_steps"] == (steps_to_success(e["task_id"], e["init_state_id"]) if expected else MAX_STEPS)

    assert [t["task_id"] for t in on_disk["per_task"]] == list(range(N_TASKS))
    t0 = on_disk["per_task"][0]
    assert t0["task_group"] == "spatial" and t0["task"] == "spatial_task_0"
    assert t0["instruction"] == "push the spatial block 0 to the right"
    lo, hi = wilson_interval(3, 4)
    assert t0["metrics"] == {"pc_success": 75.0, "n_episodes": 4, "n_success": 3,
                             "ci95": [pytest.approx(100 * lo), pytest.approx(100 * hi)]}
    n_ok = 3 * N_TASKS
    assert on_disk["per_group"]["spatial"]["n_success"] == n_ok
    overall = on_disk["overall"]
    assert overall["n_episodes"] == 4 * N_TASKS and overall["pc_success"] == pytest.approx(75.0)
    assert overall["ci95"] == [pytest.approx(100 * x) for x in wilson_interval(n_ok, 4 * N_TASKS)]
    assert overall["eval_s"] > 0 and overall["eval_ep_s"] == pytest.approx(overall["eval_s"] / 12)
    assert overall["video_paths"] == []
    assert on_disk["config"]["eval"]["n_episodes"] == 4 and on_disk["config"]["policy"]["type"] == "expert"

    logged = read_episode_log(tmp_path / "eval_episodes.jsonl")
    assert [{k: v for k, v in r.items() if k != "calls"} for r in logged] == eps
    assert [len(r["calls"]) for r in logged] == [e["n_calls"] for e in eps] == [e["n_steps"] for e in eps]


def test_evaluate_several_suites_gives_per_group(fake_envs, tmp_path):
    info = evaluate(_eval_cfg("env.suite=[spatial,goal]", "env.task_ids=[0]", "eval.n_episodes=2"), tmp_path)
    assert list(info["per_group"]) == ["spatial", "goal"]
    assert [(t["task_group"], t["task_id"]) for t in info["per_task"]] == [("spatial", 0), ("goal", 0)]
    info = evaluate(_eval_cfg("env.suite=all", "env.task_ids=[1]", "eval.n_episodes=1"), tmp_path / "all")
    assert list(info["per_group"]) == ["spatial", "object", "goal", "long"]
    assert info["overall"]["n_episodes"] == 4


def test_evaluate_writes_videos(fake_envs, tmp_path):
    cfg = _eval_cfg("eval.n_episodes=2", "eval.videos=true", "eval.max_videos=2", "eval.fps=10")
    info = evaluate(cfg, tmp_path)
    paths = info["overall"]["video_paths"]
    # one per task (videos_per_task=1), capped at 2 in all: episodes 0 (task 0) and 2 (task 1)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["eval_episode_0.mp4", "eval_episode_2.mp4"]
    frames = imageio.mimread(paths[0], format="FFMPEG")
    assert len(frames) == info["per_episode"][0]["n_steps"] + 1
    assert frames[0].shape == (16, 32, 3)


class _CountingPolicy:
    """A learned-policy stand-in: zero actions; counts builds."""

    builds = 0

    def __init__(self, cfg, env, interrupt_after=None):
        type(self).builds += 1
        self.calls, self.interrupt_after = 0, interrupt_after

    def reset(self):
        pass

    def select_action(self, obs):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        return np.zeros(7, np.float32)

    def predict_action_chunk(self, obs):
        return np.zeros((len(obs["instruction"]), 1, 7), np.float32)


def _builder(cfg, env):
    return _CountingPolicy(cfg, env, interrupt_after=cfg.get("interrupt_after"))


@pytest.mark.parametrize("bound,builds", [(False, 1), (True, N_TASKS)])
def test_learned_policies_are_built_once_env_bound_ones_per_task(fake_envs, tmp_path, monkeypatch, bound, builds):
    monkeypatch.setitem(POLICY_REGISTRY, "counting", PolicySpec(f"{__name__}:_builder", bound_to_env=bound))
    monkeypatch.setattr(_CountingPolicy, "builds", 0)
    info = evaluate(_eval_cfg("eval.n_episodes=1", "policy.type=counting"), tmp_path)
    assert _CountingPolicy.builds == builds
    assert info["overall"]["n_success"] == 0  # zero actions never push the block


def test_a_killed_run_keeps_finished_episodes(fake_envs, tmp_path, monkeypatch):
    monkeypatch.setitem(POLICY_REGISTRY, "counting", PolicySpec(f"{__name__}:_builder"))
    # Each zero-action episode runs MAX_STEPS steps; die in the middle of the third episode.
    cfg = _eval_cfg("eval.n_episodes=2", "policy.type=counting", f"+policy.interrupt_after={2 * MAX_STEPS + 3}")
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, tmp_path)
    finished = read_episode_log(tmp_path / "eval_episodes.jsonl")
    assert [e["episode_ix"] for e in finished] == [0, 1]
    assert not (tmp_path / "eval_info.json").exists()


@pytest.mark.parametrize("override,match", [
    ("eval.n_episodes=0", "eval.n_episodes must be a positive integer"),
    ("env.task_ids=[0,9]", r"unknown task_id 9 for suite 'spatial'; valid ids: \[0, 1, 2\]"),
    ("env.suite=spatail", "Did you mean 'spatial'"),
    ("policy.type=expret", "Did you mean 'expert'"),
])
def test_bad_config_is_a_clear_value_error(fake_envs, tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        evaluate(_eval_cfg(override), tmp_path)


def test_resume_keeps_finished_episodes_and_runs_the_rest(fake_envs, tmp_path, monkeypatch):
    monkeypatch.setitem(POLICY_REGISTRY, "counting", PolicySpec(f"{__name__}:_builder"))
    killed = _eval_cfg("eval.n_episodes=2", "policy.type=counting", f"+policy.interrupt_after={2 * MAX_STEPS + 3}")
    with pytest.raises(KeyboardInterrupt):
        evaluate(killed, tmp_path)
    # Finish with another policy: the two finished (failed) episodes must be kept, not re-run.
    info = evaluate(_eval_cfg("eval.n_episodes=2", "eval.resume=true"), tmp_path)
    eps = info["per_episode"]
    assert [e["episode_ix"] for e in eps] == list(range(2 * N_TASKS))
    assert [e["success"] for e in eps] == [False, False] + [True] * (2 * N_TASKS - 2)
    assert len(read_episode_log(tmp_path / "eval_episodes.jsonl")) == 2 * N_TASKS
    overall = info["overall"]  # the time per episode counts only the episodes this run ran
    assert overall["eval_ep_s"] == pytest.approx(overall["eval_s"] / (2 * N_TASKS - 2))


def test_resume_refuses_a_log_of_another_configuration(fake_envs, tmp_path):
    evaluate(_eval_cfg("eval.n_episodes=1", "env.task_ids=[0]"), tmp_path)
    with pytest.raises(ValueError, match="another run configuration"):
        evaluate(_eval_cfg("eval.n_episodes=1", "env.task_ids=[1]", "eval.resume=true"), tmp_path)


def test_a_fresh_run_in_a_used_directory_starts_a_fresh_log(fake_envs, tmp_path):
    evaluate(_eval_cfg("eval.n_episodes=1"), tmp_path)
    evaluate(_eval_cfg("eval.n_episodes=1"), tmp_path)
    assert len(read_episode_log(tmp_path / "eval_episodes.jsonl")) == N_TASKS


def test_accel_none_runs_the_plain_policy_and_a_real_accel_needs_a_vla(fake_envs, tmp_path):

    assert accel_config(_eval_cfg()) is None  # accel=none (or no accel group): nothing to apply
    cfg = _eval_cfg("accel=fastv", "eval.n_episodes=1")
    assert accel_config(cfg) is not None
    with pytest.raises(ValueError, match="does not run its LLM through a runner"):
        evaluate(cfg, tmp_path)  # the scripted expert has no LLM to accelerate
