"""accelerate() on the real OpenVLA-style and CogACT-style policies (tiny, random weights)."""

import numpy as np
import pytest
import torch
from fixtures.tiny_models import obs, tiny_cogact, tiny_openvla

from vla_accel.accel.config import AccelConfig
from vla_accel.accel.accelerate import accelerate
from vla_accel.accel.head_cache import head_cache
from vla_accel.policies.llm_runner import HFRunner
from vla_accel.accel.runner import AcceleratedRunner


@pytest.fixture(scope="module")
def openvla():
    return tiny_openvla()


@pytest.fixture(scope="module")
def cogact():
    return tiny_cogact()


def test_openvla_with_everything_off_gives_the_same_actions(openvla):
    openvla.runner = HFRunner()
    openvla.reset()
    ref = openvla.predict_action_chunk(obs(batch=2))
    accelerate(openvla, "none")
    assert isinstance(openvla.runner, AcceleratedRunner)
    assert np.array_equal(openvla.predict_action_chunk(obs(batch=2)), ref)


def test_openvla_vla_pruner_warms_up_then_prunes_and_resets(openvla):
    accelerate(openvla, "vla_pruner", keep_ratio=0.25, prune_layer=2)
    runner = openvla.runner
    m = openvla.config.num_visual_tokens
    for step in range(5):
        action = openvla.select_action(obs(seed=step))
        assert action.shape == (7,) and np.isfinite(action).all()
        assert runner.stats.pruned == (step >= 3)
    assert runner.stats.kept_visual.shape == (1, round(m * 0.25))
    # the 7 action queries (prefill's last + 6 decodes) were read at the action layer only, by default
    # max(K, 4 // 2 - 1) = K = 2: never before the pruning layer
    # (the decoded queries' weights kept from the layer's own attention: scored_attention)
    assert runner.stats.attention_probes[1:] == [("prefill", 2, 1)] + [("decode:own", 2, 1)] * 6
    openvla.reset()
    assert len(runner.method._history) == 0
    openvla.select_action(obs())
    assert not runner.stats.pruned


def test_bad_configs_fail_at_accelerate_time(openvla, cogact):
    before = openvla.runner
    with pytest.raises(ValueError, match="beyond the model's 4 layers"):
        accelerate(openvla, "fastv", prune_layer=7)
    with pytest.raises(ValueError, match="DiT action head"):
        accelerate(openvla, "fastv", head_cache_interval=5)
    with pytest.raises(ValueError, match="Did you mean 'fastv'"):
        accelerate(openvla, "fastvv")
    assert openvla.runner is before  # a failed accelerate() leaves the policy as it was


def test_cogact_head_cache_recomputes_every_n_steps(cogact):
    cogact.config.ddim_steps = 10
    shape = (1, cogact.config.chunk_size, cogact.config.action_dim)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    accelerate(cogact, "none")
    ref = cogact.predict_action_chunk(obs(), noise=noise)
    calls = []
    attn0 = cogact.action_model.blocks[0].attn
    hook = attn0.register_forward_hook(lambda *a: calls.append(1))
    try:
        accelerate(cogact, AccelConfig.from_dict({"head_cache_interval": 1}))
        assert np.allclose(cogact.predict_action_chunk(obs(), noise=noise), ref, atol=1e-6)
        calls.clear()
        accelerate(cogact, AccelConfig.from_dict({"head_cache_interval": 5}))
        cache = head_cache(cogact)
        out = cogact.predict_action_chunk(obs(), noise=noise)
        assert cache.step == 10 and cache.full_steps == 2  # steps 0 and 5 recompute
        assert len(calls) == 2  # the module runs only at the two refreshes; 8 steps are served from the store:
        assert len(cache._store) == 2 * cogact.config.dit_depth
        assert np.isfinite(out).all() and not np.allclose(out, ref, atol=1e-4)
        cogact.predict_action_chunk(obs(), noise=noise)
        assert cache.full_steps == 4  # a new control step starts a new loop (steps 0 and 5 again)
        accelerate(cogact, "none")  # removes the cache: back to the reference
        assert head_cache(cogact) is None
        assert np.allclose(cogact.predict_action_chunk(obs(), noise=noise), ref, atol=1e-6)
    finally:
        hook.remove()


def test_cogact_head_cache_evaluates_the_submodules_only_on_refresh_steps(cogact):
    accelerate(cogact, AccelConfig.from_dict({"head_cache_interval": 5}))
    inner = []
    mlp = cogact.action_model.blocks[1].mlp
    orig = mlp.fc1.forward
    mlp.fc1.forward = lambda x: inner.append(1) or orig(x)
    try:
        cogact.predict_action_chunk(obs())
    finally:
        del mlp.fc1.forward
        accelerate(cogact, "none")
    assert len(inner) == 2


def test_cogact_vla_pruner_uses_the_cognition_query(cogact):
    accelerate(cogact, "vla_pruner", keep_ratio=0.5, prune_layer=2, params={"window": 1, "action_layer": 3})
    cogact.predict_action_chunk(obs())
    assert cogact.runner.stats.attention_probes == [("prefill", 3, 1)]
    cogact.predict_action_chunk(obs())
    assert cogact.runner.stats.pruned
    accelerate(cogact, "none")


def test_openvla_vla_cache_reuses_static_tokens_of_a_repeated_frame(openvla):
    openvla.runner = HFRunner()
    openvla.reset()
    ref = openvla.predict_action_chunk(obs(seed=3))
    accelerate(openvla, "vla_cache", reuse={"relevance_layer": 1})
    first = openvla.predict_action_chunk(obs(seed=3))
    assert openvla.runner.stats.num_reused == 0
    again = openvla.predict_action_chunk(obs(seed=3))  # the same frame: every static, irrelevant token is reused
    assert openvla.runner.stats.num_reused > 0
    assert np.array_equal(first, ref) and np.allclose(again, ref, atol=1e-6)
    accelerate(openvla, "none")
    assert "encode_images" not in vars(openvla)


def test_cogact_all_three_parts_together_on_a_batch(cogact):
    cfg = AccelConfig.from_dict({"method": "vla_pruner", "keep_ratio": 0.25, "prune_layer": 1,
                                 "params": {"window": 1, "action_layer": 2}, "skip_layers": [3],
                                 "head_cache_interval": 5})  # fmt: skip
    accelerate(cogact, cfg)
    try:
        for step in range(3):
            chunk = cogact.predict_action_chunk(obs(seed=step, batch=2))
            assert chunk.shape == (2, cogact.config.chunk_size, 7) and np.isfinite(chunk).all()
            assert cogact.runner.stats.pruned == (step >= 1)
        assert cogact.runner.stats.kept_visual.shape == (2, 4)
        assert cogact.runner.method._history[-1].shape == (2, 16)
        assert head_cache(cogact).full_steps == 3 * 2
    finally:
        accelerate(cogact, "none")


def test_select_stage_times_the_pruning_methods_own_work(openvla):
    """VLA-Pruner's probes, capture, selection and history update are timed as "select", inside prefill
    and decode; with no acceleration there is no select stage."""
    accelerate(openvla, "none")
    openvla.predict_action_chunk(obs())
    assert "select" not in openvla.last_timing
    accelerate(openvla, "vla_pruner", keep_ratio=0.25, prune_layer=2)
    for step in range(5):
        openvla.predict_action_chunk(obs(seed=step))
        t = openvla.last_timing
        assert t["select"] > 0  # the warm-up steps capture the action attention too
        assert t["select"] <= t["prefill"] + t["decode"] <= t["total"]
    assert openvla.runner.stats.pruned
    accelerate(openvla, "none")


def test_keep_tokens_beyond_the_visual_token_count_fails_at_accelerate_time(openvla):
    m = openvla.config.num_visual_tokens
    before = openvla.runner
    with pytest.raises(ValueError, match=f"keep_tokens={m + 1} exceeds the {m} visual tokens"):
        accelerate(openvla, "fastv", keep_tokens=m + 1, prune_layer=2)
    assert openvla.runner is before
    accelerate(openvla, "fastv", keep_tokens=m, prune_layer=2)  # all of them is allowed
    accelerate(openvla, "none")
