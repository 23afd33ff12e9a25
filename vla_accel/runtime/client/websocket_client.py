"""`WebsocketClientPolicy`: talk to `vla-accel serve` from a robot's own loop (numpy + msgpack +
websockets only -- no torch on the robot).

    policy = WebsocketClientPolicy("127.0.0.1", 8000)
    policy.get_server_metadata()            # {"policy_type", "action_dim", "action_horizon", ...}
    policy.reset()                          # new episode (on the server, for this connection only)
    out = policy.infer(obs)                 # {"actions": (H, 7) float32, "policy_timing": {...}, ...}

If the server goes away (restart, network blip) the next call reconnects for up to
``reconnect_timeout_s`` and, because a new connection starts a new episode on the server, sends a reset
first and counts it in ``reconnects`` -- the caller's episode history (temporal pruning state, action
queue) on the server is gone, and the episode goes on from a clean state rather than silently mixing.
"""

from __future__ import annotations

import time
from typing import Any

import inspect

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from vla_accel.runtime.client.msgpack_numpy import packb, unpackb


# websockets >= 15 reads proxy settings from the environment (not wanted for a robot's direct link) and
# >= 16 asks for legacy=True when connect() is not used as a context manager; older ones know neither.
_CONNECT_PARAMS = inspect.signature(connect).parameters
_CONNECT_EXTRA = {k: v for k, v in (("proxy", None), ("legacy", True)) if k in _CONNECT_PARAMS}


class ServerError(RuntimeError):
    """The server answered a request with an error message (bad observation, bad request, ...)."""


class WebsocketClientPolicy:
    def __init__(self, host: str = "127.0.0.1", port: int = 8000, *, reconnect_timeout_s: float = 30.0,
                 request_timeout_s: float | None = 60.0, max_message_bytes: int = 64 * 2**20) -> None:
        self.uri = f"ws://{host}:{int(port)}"
        self.reconnect_timeout_s = float(reconnect_timeout_s)
        self.request_timeout_s = request_timeout_s
        self.max_message_bytes = int(max_message_bytes)
        self.reconnects = 0  # times a lost connection was re-established (each one reset the episode)
        self._seq = 0
        self._ws: ClientConnection | None = None
        self._metadata: dict[str, Any] = {}
        self._connect(self.reconnect_timeout_s)

    # ------------------------------------------------------------------------------------ policy API
    def get_server_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def infer(self, obs: dict) -> dict[str, Any]:
        """One observation (unbatched, as the env returns it) -> {"actions": (H, A), "policy_timing", ...}."""
        return self._request({"type": "infer", "obs": obs})

    def select_action(self, obs: dict):
        """LeRobot's call, served from this connection's action queue on the server -> (A,)."""
        return self._request({"type": "select_action", "obs": obs})["action"]

    def reset(self) -> None:
        self._request({"type": "reset"})

    def set_keep_ratio(self, keep_ratio: float) -> float:
        return float(self._request({"type": "set_keep_ratio", "keep_ratio": float(keep_ratio)})["keep_ratio"])

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> "WebsocketClientPolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ transport
    def _connect(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            try:
                self._ws = connect(self.uri, max_size=self.max_message_bytes, compression=None,
                                   open_timeout=max(1.0, min(10.0, timeout_s)), **_CONNECT_EXTRA)
                meta = unpackb(self._ws.recv(timeout=self.request_timeout_s))
                if not isinstance(meta, dict) or meta.get("type") != "metadata":
                    raise ServerError(f"expected the server's metadata on connect, got {meta!r:.200}")
                self._metadata = meta
                return
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as e:
                if isinstance(e, InvalidURI) or time.monotonic() + delay > deadline:
                    raise ConnectionError(f"cannot reach a vla-accel server at {self.uri}: {e}") from e
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    def _round_trip(self, message: dict) -> dict:
        self._ws.send(packb(message))
        while True:
            reply = unpackb(self._ws.recv(timeout=self.request_timeout_s))
            if reply.get("seq") == message["seq"] or reply.get("type") != "metadata":
                return reply

    def _request(self, message: dict) -> dict:
        self._seq += 1
        message = {**message, "seq": self._seq}
        try:
            if self._ws is None:
                raise ConnectionError("not connected")
            reply = self._round_trip(message)
        except (ConnectionClosed, ConnectionError, OSError):
            # The server restarted or the link dropped: reconnect, start a clean episode, retry once.
            self.close()
            self._connect(self.reconnect_timeout_s)
            self.reconnects += 1
            if message["type"] != "reset":
                self._seq += 1
                self._check(self._round_trip({"type": "reset", "seq": self._seq}), self._seq)
            self._seq += 1
            message = {**message, "seq": self._seq}
            reply = self._round_trip(message)
        return self._check(reply, message["seq"])

    @staticmethod
    def _check(reply: Any, seq: int) -> dict:
        if not isinstance(reply, dict):
            raise ServerError(f"unexpected reply {reply!r:.200}")
        if reply.get("type") == "error":
            raise ServerError(reply.get("error", "unknown server error"))
        if reply.get("seq") != seq:
            raise ServerError(f"reply out of order: sent seq {seq}, got {reply.get('seq')}")
        return reply
