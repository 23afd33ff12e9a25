"""A real policy server on 127.0.0.1 (ephemeral port) with a tiny VLA-Pruner-accelerated policy:
round trips, per-connection episode state, reconnects, and a remote control loop."""

from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
from fixtures.tiny_models import obs as make_obs

from vla_accel.runtime.client import ServerError, WebsocketClientPolicy
from vla_accel.runtime.episode_fork import fork_episode


def single_obs(seed: int) -> dict:
    o = make_obs(seed)
    return {"agentview_image": o["agentview_image"], "state": o["state"], "instruction": o["instruction"]}


def local_actions(policy, observations, keep_ratio=None) -> list[np.ndarray]:
    """What a fresh episode of `policy` answers to this sequence in-process (the reference)."""
    from vla_accel.runtime.budget import set_keep_ratio

    view = fork_episode(policy)
    if keep_ratio is not None:
        set_keep_ratio(view, keep_ratio)
    return [view.infer(o)["actions"] for o in observations]


def test_healthz_and_metadata_on_connect(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
        assert r.status == 200 and r.read() == b"ok\n"
    with WebsocketClientPolicy("127.0.0.1", server.port) as client:
        meta = client.get_server_metadata()
    assert meta["policy_type"] == "vla_accel_openvla" and meta["action_dim"] == 7
    assert meta["action_horizon"] == 1 and meta["image_size"] == 32 and meta["cameras"] == ["agentview"]
    assert meta["accel"]["pruning"]["method"] == "vla_pruner" and meta["accel"]["pruning"]["keep_ratio"] == 0.5
    assert meta["server_version"] and meta["protocol"] == 1


def test_round_trip_equals_the_in_process_policy(server, pruned_openvla):
    seq = [single_obs(i) for i in range(4)]
    expected = local_actions(pruned_openvla, seq)
    with WebsocketClientPolicy("127.0.0.1", server.port) as client:
        for o, want in zip(seq, expected):
            out = client.infer(o)
            assert out["actions"].shape == (1, 7) and out["actions"].dtype == np.float32
            np.testing.assert_allclose(out["actions"], want, rtol=1e-5, atol=1e-6)
            assert out["policy_timing"]["infer_ms"] > 0 and out["server_timing"]["queue_ms"] >= 0
        client.reset()  # a new episode: the same sequence gives the same answers again
        np.testing.assert_allclose(client.infer(seq[0])["actions"], expected[0], rtol=1e-5, atol=1e-6)


def kept(out: dict):
    k = out["accel_stats"]["kept_visual"]
    return None if k is None else k.tolist()


def test_two_concurrent_clients_keep_separate_episodes(server, pruned_openvla):
    """VLA-Pruner's choice of tokens depends on the episode's action-attention history (window 2,
    no pruning before it is full): each client's choices must equal those of its own episode alone."""
    seq_a = [single_obs(i) for i in range(6)]
    seq_b = [single_obs(100 + i) for i in range(6)]

    def alone(seq):
        view = fork_episode(pruned_openvla)
        return [kept(view.infer(o)) for o in seq]

    alone_a, alone_b = alone(seq_a), alone(seq_b)
    assert alone_a[:2] == [None, None] and all(k is not None for k in alone_a[2:])  # warm-up, then pruning
    # the test has teeth: ONE episode fed the interleaved requests chooses differently
    shared = fork_episode(pruned_openvla)
    mixed = [kept(shared.infer(o)) for pair in zip(seq_a, seq_b) for o in pair][0::2]
    assert mixed != alone_a

    results: dict[str, list] = {}
    barrier = threading.Barrier(2)

    def run(name, seq, reset_after=None):
        with WebsocketClientPolicy("127.0.0.1", server.port) as client:
            barrier.wait()
            out = []
            for i, o in enumerate(seq):
                out.append(kept(client.infer(o)))
                if i == reset_after:
                    client.reset()
            results[name] = out

    # A resets after its 3rd step (its warm-up starts again); B's history must survive that
    threads = [threading.Thread(target=run, args=("a", seq_a, 2)), threading.Thread(target=run, args=("b", seq_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["a"] == alone_a[:3] + alone(seq_a[3:])
    assert results["a"][3:5] == [None, None]
    assert results["b"] == alone_b


def test_keep_ratio_is_set_per_connection(server, pruned_openvla):
    seq = [single_obs(i) for i in range(3)]
    want_quarter = local_actions(pruned_openvla, seq, keep_ratio=0.25)
    want_half = local_actions(pruned_openvla, seq)
    with WebsocketClientPolicy("127.0.0.1", server.port) as a, WebsocketClientPolicy("127.0.0.1", server.port) as b:
        assert a.set_keep_ratio(0.25) == 0.25
        for o, wq, wh in zip(seq, want_quarter, want_half):
            np.testing.assert_allclose(a.infer(o)["actions"], wq, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(b.infer(o)["actions"], wh, rtol=1e-5, atol=1e-6)
        with pytest.raises(ServerError, match="keep_ratio"):
            a.set_keep_ratio(1.5)
    assert pruned_openvla.runner.config.pruning.keep_ratio == 0.5  # the served policy itself is untouched


def test_select_action_uses_the_connections_own_queue(one_thread):
    from fixtures.tiny_models import tiny_cogact

    from vla_accel.accel.accelerate import accelerate
    from vla_accel.runtime.serving.server import PolicyServer, ServeConfig

    policy = accelerate(tiny_cogact(), "fastv", keep_ratio=0.5, prune_layer=1, head_cache_interval=2)
    expected = fork_episode(policy).predict_action_chunk(single_obs(0))[0, :8]  # n_action_steps = 8
    srv = PolicyServer(policy, ServeConfig(port=0))
    srv.start_in_thread()
    try:
        with WebsocketClientPolicy("127.0.0.1", srv.port) as a, WebsocketClientPolicy("127.0.0.1", srv.port) as b:
            assert a.get_server_metadata()["action_horizon"] == 16
            got_a = [a.select_action(single_obs(0)) for _ in range(3)]
            got_b = [b.select_action(single_obs(0)) for _ in range(2)]  # B's queue starts its own chunk
            got_a += [a.select_action(single_obs(5)) for _ in range(5)]  # A's queue still serves chunk 0
            np.testing.assert_allclose(np.stack(got_a), expected, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(np.stack(got_b), expected[:2], rtol=1e-4, atol=1e-5)
            assert a.infer(single_obs(0))["actions"].shape == (16, 7)
        assert srv.stats.inferences == 11 and srv.stats.errors == 0  # 10 select_action + 1 infer requests
    finally:
        srv.stop()


def test_client_reconnects_and_resets_after_a_server_restart(pruned_openvla):
    from vla_accel.runtime.serving.server import PolicyServer, ServeConfig

    first = PolicyServer(pruned_openvla, ServeConfig(port=0))
    port = first.start_in_thread()
    client = WebsocketClientPolicy("127.0.0.1", port, reconnect_timeout_s=20)
    seq = [single_obs(i) for i in range(3)]
    client.infer(seq[0])
    client.infer(seq[1])
    first.stop()
    second = PolicyServer(pruned_openvla, ServeConfig(port=port))
    restart = threading.Timer(0.5, second.start_in_thread)  # down for a moment: the client keeps trying
    restart.start()
    try:
        out = client.infer(seq[0])
        assert client.reconnects == 1 and out["episode_reset"] is True  # reported, never silent
        # after the reconnect the episode restarted: the answer is a fresh episode's first answer
        np.testing.assert_allclose(out["actions"], local_actions(pruned_openvla, seq[:1])[0], rtol=1e-5, atol=1e-6)
        assert second.stats.connections == 1
    finally:
        restart.join()
        client.close()
        second.stop()


def test_a_client_gives_up_when_no_server_comes_back():
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach"):
        WebsocketClientPolicy("127.0.0.1", port, reconnect_timeout_s=0.5)
    assert time.monotonic() - t0 < 10


def test_remote_control_loop_against_the_server(server):
    from vla_accel.runtime.control_loop import ControlLoop, LoopConfig

    class FrameRobot:
        def __init__(self):
            self.t, self.actions = 0, []

        def get_observation(self):
            return single_obs(self.t % 5)

        def apply_action(self, action):
            assert action.shape == (7,) and np.isfinite(action).all()
            self.actions.append(action)
            self.t += 1

    robot = FrameRobot()
    with WebsocketClientPolicy("127.0.0.1", server.port) as client:
        loop = ControlLoop(robot, client, LoopConfig(control_hz=10.0))
        loop.reset()
        report = loop.run(12).summary()
        loop.close()
    assert report["steps"] == 12 and len(robot.actions) == 12 and report["inferences"] >= 2
    assert report["latency_ms"]["p50"] > 0


def test_remote_control_loop_drives_a_simulated_suite(server):
    import vla_accel.envs as envs
    from vla_accel.runtime.control_loop import ControlLoop, GymRobot, LoopConfig

    env = envs.make_env("spatial", 0, image_size=32)
    try:
        robot = GymRobot(env)
        robot.reset(seed=0, init_state_id=0)
        with WebsocketClientPolicy("127.0.0.1", server.port) as client:
            loop = ControlLoop(robot, client, LoopConfig(control_hz=20.0))
            loop.reset()
            rep = loop.run(15, stop=lambda: robot.done).summary()
            loop.close()
    finally:
        env.close()
    assert robot.n_steps == rep["steps"] == 15 and rep["inferences"] >= 5
