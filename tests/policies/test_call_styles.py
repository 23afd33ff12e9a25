"""The three call styles on accelerated tiny policies: LeRobot's, openpi's infer, OpenVLA's predict_action."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.tiny_models import obs, tiny_cogact, tiny_openvla

from vla_accel.accel.accelerate import accelerate
from vla_accel.policies.call_styles import infer


pytestmark = pytest.mark.usefixtures("one_thread")


def test_openvla_style_call_styles_agree():
    policy = accelerate(tiny_openvla(), "fastv", keep_ratio=0.5, prune_layer=1)
    o = obs(0)
    out = policy.infer(o)  # openpi
    assert out["actions"].shape == (1, 7) and out["actions"].dtype == np.float32
    assert out["policy_timing"]["infer_ms"] > 0
    assert out["accel_stats"]["tokens_kept"] == out["accel_stats"]["tokens"] - 8  # 16 visual tokens, half kept
    assert out["accel_stats"]["kept_visual"].shape == (8,)
    policy.reset()
    np.testing.assert_allclose(policy.select_action(o), out["actions"][0], rtol=1e-5)  # LeRobot
    np.testing.assert_allclose(policy.predict_action_chunk(o)[0], out["actions"], rtol=1e-5)
    np.testing.assert_allclose(policy.predict_action(o["agentview_image"], o["instruction"]),  # OpenVLA
                               out["actions"][0], rtol=1e-5)


def test_cogact_style_infer_returns_the_chunk():
    policy = accelerate(tiny_cogact(), "vla_pruner", keep_ratio=0.5, prune_layer=2, head_cache_interval=2,
                        params={"window": 1, "action_layer": 1})
    out = policy.infer(obs(0))
    assert out["actions"].shape == (16, 7) and np.isfinite(out["actions"]).all()


def test_infer_takes_one_observation():
    policy = accelerate(tiny_openvla(), "none")
    with pytest.raises(ValueError, match="unbatched"):
        infer(policy, obs(0, batch=2))
    with pytest.raises(ValueError, match="dict"):
        infer(policy, [1, 2])
    assert "accel_stats" in infer(policy, obs(0))  # the plain runner reports no pruning
    assert not infer(policy, obs(0))["accel_stats"]["pruned"]
