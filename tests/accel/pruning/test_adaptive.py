"""Adaptive budgets: the keep ratio of each control step gated on the executed actions (ADP, SpecPrune)."""

import numpy as np
import pytest
import torch
from fixtures.tiny_models import make_llama, make_prompt, obs, tiny_openvla

from vla_accel.accel.accelerate import accelerate
from vla_accel.accel.config import AccelConfig, TokenPruningConfig, load_accel_config, resolve_plan
from vla_accel.accel.pruning import build_method
from vla_accel.accel.runner import AcceleratedRunner

M = 16


def act(*rows):
    """(B, 1, 7) actions from per-row (dx, dy, dz, droll, dpitch, dyaw)."""
    return torch.tensor([[list(r) + [1.0]] for r in rows])


FAST, SLOW = (0.6, 0.3, 0.0, 0.0, 0.0, 0.0), (0.1, 0.05, 0.0, 0.2, 0.0, 0.0)


def test_specprune_restores_tokens_in_precise_mode_and_prunes_when_fast():
    method = build_method("adaptive", mode="specprune", base="fastv")
    assert method.step_budget(M, 4) == M  # nothing executed yet: keep everything
    method.observe_actions(act(FAST))
    assert method.step_budget(M, 4) == 4 and method.last_fine.tolist() == [False]  # ||t|| = 0.67 >= 0.4
    method.observe_actions(act(SLOW))
    assert method.step_budget(M, 4) == M and method.last_fine.tolist() == [True]  # ||t|| = 0.11 < 0.4
    turning = (0.35, 0.3, 0.0, 0.0, 0.0, 0.0)  # ||t|| = 0.46: coarse, though each component is < 0.4
    method.observe_actions(act(turning))
    assert method.step_budget(M, 4) == 4
    tiny = build_method("adaptive", mode="specprune", base="fastv", threshold=0.0)  # only the delta rule
    tiny.observe_actions(act((0.05, 0.05, 0.05, 0.05, 0.09, 0.0)))
    assert tiny.step_budget(M, 4) == M
    tiny.observe_actions(act((0.05, 0.05, 0.05, 0.05, 0.11, 0.0)))
    assert tiny.step_budget(M, 4) == 4
    half = build_method("adaptive", mode="specprune", base="fastv", fine_keep_ratio=0.5)
    half.observe_actions(act(SLOW))
    assert half.step_budget(M, 4) == 8


def test_adp_gates_on_the_net_motion_of_the_last_two_actions():
    method = build_method("adaptive", base="text_guided")  # mode adp, window 2
    budgets = []
    for a in [FAST, FAST, FAST, SLOW, SLOW, FAST, (-0.6, -0.3, 0, 0, 0, 0)]:
        budgets.append(method.step_budget(M, 12))
        method.observe_actions(act(a))
    budgets.append(method.step_budget(M, 12))
    # warm-up (0, 1 actions): full; FAST FAST: prune; FAST SLOW: mean net 0.39 < 0.4 -> full; SLOW SLOW: full;
    # SLOW FAST: 0.39 -> full; FAST then its reverse: net 0 -> full (back and forth is fine motion)
    assert budgets == [M, M, 12, 12, M, M, M, M]


def test_state_resets_per_episode_and_rows_gate_independently():
    method = build_method("adaptive", mode="specprune", base="fastv")
    method.observe_actions(act(FAST, SLOW))
    assert method.step_budget(M, 4) == M and method.last_fine.tolist() == [False, True]  # the batch keeps the max
    method.observe_actions(act(FAST, FAST))
    assert method.step_budget(M, 4) == 4 and method.last_fine.tolist() == [False, False]
    with pytest.raises(ValueError, match="batch size changed"):
        method.observe_actions(act(FAST))
    method.reset()
    assert method.step_budget(M, 4) == M and method.last_fine is None  # a new episode starts unknown
    method.observe_actions(act(FAST))  # batch 1 now fine
    assert method.step_budget(M, 4) == 4


def test_the_wrapper_delegates_everything_else_to_its_base():
    w = build_method("adaptive", base="vla_pruner", base_params={"window": 2, "action_layer": 4})
    assert w.needs_action_attention and w.score_queries == "all" and w.default_layer == 2 and w.action_layer == 4
    cfg = AccelConfig(pruning=TokenPruningConfig(method="adaptive", keep_ratio=0.25,
                                                 params={"base": "vla_pruner", "base_params": {"action_layer": 4}}))
    plan = resolve_plan(cfg, 6)
    assert plan.stage_layers == (2,) and plan.action_layer == 4 and cfg.pruning.prune_layer == 2
    assert resolve_plan(load_accel_config("adaptive", params={"base": "feather"}), 32).stage_layers == (8, 16)
    with pytest.raises(ValueError, match="mode"):
        build_method("adaptive", mode="fast")
    with pytest.raises(ValueError, match="unknown parameter"):
        build_method("adaptive", base="fastv", base_params={"windw": 3})


def test_the_runner_records_the_adaptive_ratio_per_step_and_forks_fresh_state():
    llm, prompt = make_llama(num_layers=4), make_prompt()
    cfg = load_accel_config("adaptive", params={"base": "fastv", "mode": "specprune"})
    runner = AcceleratedRunner(cfg)
    seen = []
    for actions in [None, act(FAST, FAST, FAST), act(SLOW, FAST, FAST)]:
        if actions is not None:
            runner.observe_actions(actions)
        runner.end_step()
        runner.prefill(llm, **prompt)
        stats = runner.call_stats()
        seen.append((stats["keep_ratio"], stats["pruned"], stats["tokens_kept"]))
    T = prompt["attention_mask"].shape[1]
    assert seen == [(1.0, False, T), (0.75, True, T - M + 12), (1.0, False, T)]
    fork = runner.fork()
    fork.prefill(llm, **prompt)
    assert fork.call_stats()["keep_ratio"] == 1.0 and len(runner.method._history) == 1  # the fork starts empty
    runner.reset()
    runner.prefill(llm, **prompt)
    assert runner.call_stats()["keep_ratio"] == 1.0


def test_the_policy_hands_its_actions_to_the_runner():
    policy = tiny_openvla()
    accelerate(policy, "adaptive", keep_ratio=0.25, params={"base": "fastv", "mode": "specprune", "threshold": 10.0,
                                           "delta_threshold": 0.0, "fine_keep_ratio": 0.5})  # fmt: skip
    out = policy.predict_action_chunk(obs(batch=2))
    history = policy.runner.method._history
    assert np.isfinite(out).all() and len(history) == 1 and history[-1].shape == (2, 6)
    assert bool((history[-1].abs() <= 1.0).all())  # the normalised actions, not the un-normalised ones
    policy.predict_action_chunk(obs(batch=2))
    assert policy.runner.call_stats()["keep_ratio"] == 0.5  # every speed < 10: always fine -> 0.5
    policy.reset()
    assert len(policy.runner.method._history) == 0
