"""Servers with their own settings: a hostile 4 MB request never stalls the event loop, a cap on
connections, a disconnect for a client that does not read its replies, Origin and token checks."""

from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
from fixtures.tiny_models import obs as make_obs
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from vla_accel.runtime.client import WebsocketClientPolicy, packb, unpackb

TOKEN = "s3cret-token-for-the-tests"


def good_obs() -> dict:
    o = make_obs(0)
    return {"agentview_image": o["agentview_image"], "state": o["state"], "instruction": o["instruction"]}


@pytest.fixture
def serve_with(pruned_openvla):
    from vla_accel.runtime.serving.server import PolicyServer, ServeConfig

    servers = []

    def start(**settings):
        srv = PolicyServer(pruned_openvla, ServeConfig(port=0, **settings))
        srv.start_in_thread()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def healthz_ms(port: int) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        r.read()
    return (time.perf_counter() - t0) * 1e3


def hostile_frames(size: int) -> list[bytes]:
    n = size - 64
    return [msgpack.packb({"type": "infer", "obs": {"state": {"__ndarray__": b"\0" * 4, "dtype": ",".join(["f4"] * (n // 3)),
                                                             "shape": [1]}}}),  # a 1.4M-field structured dtype
            b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n]  # 4 million empty lists


def test_healthz_stays_fast_while_hostile_4mb_requests_are_refused(serve_with):
    srv = serve_with(max_message_bytes=4 * 2**20)
    frames = hostile_frames(4 * 2**20)
    replies, done = [], threading.Event()

    def attack():
        with connect(f"ws://127.0.0.1:{srv.port}", proxy=None, max_size=2**26) as ws:
            ws.recv(timeout=30)
            for i in range(20):
                t0 = time.perf_counter()
                ws.send(frames[i % 2])
                replies.append((unpackb(ws.recv(timeout=60)), time.perf_counter() - t0))
        done.set()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    latencies = []
    while not done.wait(0.01) and len(latencies) < 2000:
        latencies.append(healthz_ms(srv.port))
    attacker.join(60)
    assert len(replies) == 20 and all(r["type"] == "error" for r, _ in replies)
    assert max(t for _, t in replies) < 2.0  # refused from the header, not after parsing it
    print(f"healthz during the attack: n={len(latencies)} median {statistics.median(latencies):.1f} ms "
          f"max {max(latencies):.1f} ms")
    assert len(latencies) >= 3 and statistics.median(latencies) < 50, latencies


def test_a_cap_on_connections(serve_with):
    srv = serve_with(max_connections=2)
    a, b = WebsocketClientPolicy("127.0.0.1", srv.port), WebsocketClientPolicy("127.0.0.1", srv.port)
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{srv.port}", proxy=None, open_timeout=10).close()
    assert refused.value.response.status_code == 503
    a.close()
    deadline = time.monotonic() + 10
    while srv.stats.open_connections > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    with WebsocketClientPolicy("127.0.0.1", srv.port) as c:  # room again
        assert c.infer(good_obs())["actions"].shape == (1, 7)
    b.close()


def test_a_client_that_does_not_read_its_replies_is_disconnected(serve_with):
    srv = serve_with(send_timeout_s=1.0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill the path to this client quickly
    sock.connect(("127.0.0.1", srv.port))
    ws = connect(f"ws://127.0.0.1:{srv.port}", sock=sock, proxy=None, max_size=2**26, legacy=True)
    ws.recv(timeout=30)
    request = packb({"type": "metadata", "seq": 1, "pad": "p" * 2000})
    closed = threading.Event()

    def flood():  # never reads; its sends block once the server stops reading
        try:
            for _ in range(200_000):
                ws.send(request)
        except (ConnectionClosed, OSError):
            pass
        closed.set()

    threading.Thread(target=flood, daemon=True).start()
    deadline = time.monotonic() + 60
    while srv.stats.slow_clients_closed == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.stats.slow_clients_closed == 1
    ws.socket.close()
    assert closed.wait(20)
    with WebsocketClientPolicy("127.0.0.1", srv.port) as other:
        assert other.infer(good_obs())["actions"].shape == (1, 7)


def test_browser_origins_are_refused_unless_allowed(serve_with):
    srv = serve_with(allowed_origins=("http://dashboard.local",))
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{srv.port}", proxy=None, origin="http://evil.example").close()
    assert refused.value.response.status_code == 403
    with connect(f"ws://127.0.0.1:{srv.port}", proxy=None, origin="http://dashboard.local") as allowed:
        assert unpackb(allowed.recv(timeout=30))["type"] == "metadata"
    with WebsocketClientPolicy("127.0.0.1", srv.port) as robot:  # no Origin header: robot code
        assert robot.infer(good_obs())["actions"].shape == (1, 7)


def test_a_token_is_required_when_set_and_off_loopback(serve_with):
    from vla_accel.runtime.serving.serve_config import ServeConfig

    with pytest.raises(ValueError, match="auth_token"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", auth_token=TOKEN).auth_token == TOKEN
    srv = serve_with(auth_token=TOKEN)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="401"):
        WebsocketClientPolicy("127.0.0.1", srv.port, reconnect_timeout_s=20)
    with pytest.raises(ConnectionError, match="401"):
        WebsocketClientPolicy("127.0.0.1", srv.port, auth_token="wrong-token-0123456789")
    assert time.monotonic() - t0 < 10  # refused at once, no retrying
    with WebsocketClientPolicy("127.0.0.1", srv.port, auth_token=TOKEN) as client:
        assert client.infer(good_obs())["actions"].shape == (1, 7)
    assert healthz_ms(srv.port) < 10_000  # health checks need no token
