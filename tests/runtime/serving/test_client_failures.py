"""The client tells a slow reply from a lost connection: a timeout keeps the connection (and the
server's episode) and the next call gets its own reply; a lost connection is re-established and the
episode reset it implies is reported (flag, callback, or exception), never silent."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from websockets.sync.server import serve

from vla_accel.runtime.client import WebsocketClientPolicy, packb, unpackb


class ScriptedServer:
    """A protocol-shaped server on 127.0.0.1 whose reply delays are scripted (delays[i]: the i-th request)."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = list(delays)
        self.connections = 0
        self.server = serve(self._handler, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handler(self, ws) -> None:
        self.connections += 1
        ws.send(packb({"type": "metadata", "protocol": 1}))
        for raw in ws:
            msg = unpackb(raw)
            time.sleep(self.delays.pop(0) if self.delays else 0.0)
            kind = "reset_done" if msg["type"] == "reset" else "result"
            ws.send(packb({"type": kind, "seq": msg["seq"], "actions": np.full((1, 7), msg["seq"], np.float32)}))

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


def test_a_slow_reply_raises_a_timeout_and_the_next_calls_get_their_own_replies():
    from vla_accel.runtime.client import RequestTimeout

    fake = ScriptedServer(delays=[0.0, 0.8])  # the 2nd request is answered late
    try:
        client = WebsocketClientPolicy("127.0.0.1", fake.port, request_timeout_s=0.5)
        assert client.infer({})["seq"] == 1
        with pytest.raises(RequestTimeout):
            client.infer({})
        assert isinstance(RequestTimeout("x"), TimeoutError)
        for _ in range(3):  # the late reply (seq 2) is discarded; each call reads its own
            out = client.infer({})
            assert out["seq"] == out["actions"][0, 0] and "episode_reset" not in out
        assert client.reconnects == 0 and client.timeouts == 1
        assert fake.connections == 1  # no silent reconnect: the server's episode was never reset
        client.close()
    finally:
        fake.close()


def test_a_timeout_after_a_reconnect_leaves_the_client_usable():
    from vla_accel.runtime.client import RequestTimeout

    first = ScriptedServer(delays=[])
    client = WebsocketClientPolicy("127.0.0.1", first.port, request_timeout_s=0.5, reconnect_timeout_s=10)
    port = first.port
    first.close()
    second = None
    try:
        second_box = {}
        restart = threading.Timer(0.3, lambda: second_box.update(s=_scripted_on(port, [0.8])))
        restart.start()
        with pytest.raises(RequestTimeout):  # reconnected, then the retried request is slow
            client.infer({})
        restart.join()
        second = second_box["s"]
        assert client.reconnects == 1
        out = client.infer({})  # the old code read the previous call's reply here, for ever after
        assert out["seq"] == out["actions"][0, 0]
        out = client.infer({})
        assert out["seq"] == out["actions"][0, 0]
        client.close()
    finally:
        if second is not None:
            second.close()


def _scripted_on(port: int, delays: list[float]) -> ScriptedServer:
    """A ScriptedServer on a given port (a restart)."""
    fake = ScriptedServer.__new__(ScriptedServer)
    fake.delays, fake.connections = list(delays), 0
    fake.server = serve(fake._handler, "127.0.0.1", port)
    fake.port = port
    fake.thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    fake.thread.start()
    return fake


def test_a_lost_connection_is_reported_as_an_episode_reset():
    from vla_accel.runtime.client import EpisodeReset

    first = ScriptedServer(delays=[])
    port = first.port
    events = []
    client = WebsocketClientPolicy("127.0.0.1", port, reconnect_timeout_s=10, on_reset=events.append)
    assert "episode_reset" not in client.infer({})
    first.close()
    second = _scripted_on(port, [])
    try:
        out = client.infer({})
        assert out["episode_reset"] is True and client.reconnects == 1
        assert len(events) == 1 and isinstance(events[0], EpisodeReset)
        assert "episode_reset" not in client.infer({})
        client.close()
        strict = WebsocketClientPolicy("127.0.0.1", port, reconnect_timeout_s=10, raise_on_reset=True)
        second.close()
        second = _scripted_on(port, [])
        with pytest.raises(EpisodeReset):
            strict.infer({})
        assert strict.infer({})["seq"] >= 1  # reconnected: the caller goes on with its new episode
        strict.close()
    finally:
        second.close()
