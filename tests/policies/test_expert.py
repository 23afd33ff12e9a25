import numpy as np
import pytest
from fixtures.fakes import FakeTabletopEnv, needs_real_tabletop
from omegaconf import OmegaConf

from vla_accel import policies
from vla_accel.policies import POLICY_REGISTRY, PolicySpec, make_policy, policy_spec
from vla_accel.policies.expert import ExpertPolicy


def test_make_policy_expert_wraps_the_envs_expert():
    env = FakeTabletopEnv("spatial", 0)
    policy = make_policy(OmegaConf.create({"type": "expert"}), env)
    assert isinstance(policy, ExpertPolicy) and isinstance(policy, policies.Policy)
    obs, _ = env.reset(options={"init_state_id": 0})
    policy.reset()
    assert policy.expert.n_resets == 1
    action = policy.select_action(obs)
    assert action.shape == (7,) and action.dtype == np.float32
    assert action[0] == 1.0 and action[6] == -1.0


def test_make_policy_accepts_a_whole_app_config():
    env = FakeTabletopEnv()
    cfg = OmegaConf.create({"env": {"suite": "spatial"}, "policy": {"type": "expert"}})
    assert isinstance(make_policy(cfg, env), ExpertPolicy)
    assert policy_spec(cfg).bound_to_env


def test_unknown_policy_type_lists_valid_ones_with_did_you_mean():
    with pytest.raises(ValueError, match=r"Did you mean 'expert'.*Valid types: .*expert"):
        make_policy({"type": "expret"}, FakeTabletopEnv())
    with pytest.raises(ValueError, match="no 'type' key"):
        make_policy({"name": "x"}, FakeTabletopEnv())


def test_registry_takes_a_new_policy_with_one_entry(monkeypatch):
    monkeypatch.setitem(POLICY_REGISTRY, "expert_twin",
                        PolicySpec("vla_accel.policies.expert:make_expert_policy", bound_to_env=True))
    assert isinstance(make_policy({"type": "expert_twin"}, FakeTabletopEnv()), ExpertPolicy)


def test_predict_action_chunk_batch_of_one_only():
    env = FakeTabletopEnv()
    policy = make_policy({"type": "expert"}, env)
    obs, _ = env.reset(options={"init_state_id": 0})
    batched = {k: ([v] if k == "instruction" else np.asarray(v)[None]) for k, v in obs.items()}
    chunk = policy.predict_action_chunk(batched)
    assert chunk.shape == (1, 1, 7)
    np.testing.assert_array_equal(chunk[0, 0], policy.select_action(obs))
    two = {k: (v * 2 if k == "instruction" else np.concatenate([v, v])) for k, v in batched.items()}
    with pytest.raises(ValueError, match="batch of 1"):
        policy.predict_action_chunk(two)


def test_env_without_expert_is_a_clear_error():
    class NoExpert:
        unwrapped = object()

    with pytest.raises(ValueError, match="no scripted expert"):
        make_policy({"type": "expert"}, NoExpert())


@needs_real_tabletop
def test_expert_policy_solves_a_real_tabletop_task():
    from vla_accel.envs import list_tasks, make_env
    from vla_accel.harness.rollout import run_episode

    task = list_tasks("spatial")[0]
    env = make_env("spatial", task.task_id, image_size=64)
    try:
        policy = make_policy({"type": "expert"}, env)
        rec = run_episode(env, policy, init_state_id=0, seed=0)
    finally:
        env.close()
    assert rec.success and 0 < rec.n_steps <= task.max_steps
