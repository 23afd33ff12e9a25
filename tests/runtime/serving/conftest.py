"""Fixtures for the serving tests: tiny accelerated policies behind a real server on 127.0.0.1:0."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def pruned_openvla(one_thread):
    """Tiny OpenVLA-style policy with VLA-Pruner (temporal action-attention history), 50% of tokens."""
    from fixtures.tiny_models import tiny_openvla

    from vla_accel.accel.accelerate import accelerate

    return accelerate(tiny_openvla(), "vla_pruner", keep_ratio=0.5, prune_layer=2,
                      params={"window": 2, "action_layer": 1})


@pytest.fixture(scope="module")
def server(pruned_openvla):
    from vla_accel.runtime.serving.server import PolicyServer, ServeConfig

    srv = PolicyServer(pruned_openvla, ServeConfig(port=0, max_message_bytes=64 * 1024,
                                                   transport_max_bytes=256 * 1024, max_instruction_chars=200))
    srv.start_in_thread()
    yield srv
    srv.stop()
