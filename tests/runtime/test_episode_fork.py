"""fork_episode: a second episode on the same weights -- nothing copied, nothing shared but the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.tiny_models import obs, tiny_cogact, tiny_openvla

from vla_accel.accel.accelerate import accelerate
from vla_accel.accel.head_cache import head_cache
from vla_accel.runtime.episode_fork import fork_episode


pytestmark = pytest.mark.usefixtures("one_thread")


def test_views_share_every_weight_and_own_their_episode_state():
    policy = accelerate(tiny_cogact(), "vla_pruner", keep_ratio=0.5, prune_layer=2, head_cache_interval=2,
                        params={"window": 1, "action_layer": 1})
    view = fork_episode(policy)
    for (name, p), (_, q) in zip(policy.named_parameters(), view.named_parameters()):
        assert p.data_ptr() == q.data_ptr(), name  # no weight copied
    assert view.runner is not policy.runner and view.runner.method is not policy.runner.method
    assert view._queue is not policy._queue and view.ensembler is not policy.ensembler
    assert view._generator is not policy._generator
    # same episode start => same answers; the view's steps leave the original's history alone
    a = [fork_episode(policy).infer(obs(i))["actions"] for i in range(1)]
    policy.reset()
    for i in range(3):
        view.infer(obs(i))
    np.testing.assert_allclose(policy.infer(obs(0))["actions"], a[0], rtol=1e-5, atol=1e-6)


def test_head_cache_runs_in_the_view():
    policy = accelerate(tiny_cogact(), "none", head_cache_interval=5)
    view = fork_episode(policy)
    cache = head_cache(policy)
    before = cache.full_steps
    view.predict_action_chunk(obs(0))
    assert cache.full_steps - before == 2  # 10 DDIM steps, recomputed every 5th: the cache was used


def test_vla_cache_frame_tap_feeds_the_views_own_runner():
    policy = accelerate(tiny_openvla(), "vla_cache")
    view = fork_episode(policy)
    view.infer(obs(0))
    view.infer(obs(0))  # same frame: VLA-Cache reuses tokens -- only possible if the view's runner saw frames
    assert view.runner.stats.num_reused > 0
    assert policy.runner._reuse_state is None  # the original's runner saw nothing


def test_plain_policies_fork_too():
    policy = tiny_openvla()
    view = fork_episode(policy)
    assert type(view.runner) is type(policy.runner) and view.runner is not policy.runner
    np.testing.assert_allclose(view.predict_action_chunk(obs(0)), policy.predict_action_chunk(obs(0)), rtol=1e-5)
