"""`WebsocketClientPolicy`: talk to `vla-accel serve` from a robot's own loop (numpy + msgpack +
websockets only -- no torch on the robot).

    policy = WebsocketClientPolicy("127.0.0.1", 8000)
    policy.get_server_metadata()            # {"policy_type", "action_dim", "action_horizon", ...}
    policy.reset()                          # new episode (on the server, for this connection only)
    out = policy.infer(obs)                 # {"actions": (H, 7) float32, "policy_timing": {...}, ...}

Two failures are told apart:
- A SLOW reply (none within ``request_timeout_s``) raises :class:`RequestTimeout` (a TimeoutError). The
  connection and the server's episode are kept; the late reply is read and discarded by the next call,
  which then gets its own reply (every request gets exactly one reply, in order).
- A LOST connection (server restart, network blip) is re-established for up to ``reconnect_timeout_s``.
  A new connection is a new episode on the server (temporal pruning history, action queue gone), so
  this is never silent: it is counted in ``reconnects``, logged as a warning, passed to ``on_reset``
  (a callable taking the :class:`EpisodeReset`), and either raised (``raise_on_reset=True``: the request
  was not retried, the connection is ready for the caller's next call) or -- the default -- the
  request is sent again on the fresh episode and its reply carries ``"episode_reset": True``.
A server refusing the client (HTTP 401: wrong or missing ``auth_token``; 403: Origin) raises
ConnectionError at once, without retrying.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Callable

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from vla_accel.runtime.client.msgpack_numpy import packb, unpackb

log = logging.getLogger(__name__)

# websockets >= 15 reads proxy settings from the environment (not wanted for a robot's direct link) and
# >= 16 asks for legacy=True when connect() is not used as a context manager; older ones know neither.
_CONNECT_PARAMS = inspect.signature(connect).parameters
_CONNECT_EXTRA = {k: v for k, v in (("proxy", None), ("legacy", True)) if k in _CONNECT_PARAMS}
AUTH_HEADER = "Authorization"  # "Bearer <serve.auth_token>"


class ServerError(RuntimeError):
    """The server answered a request with an error message (bad observation, bad request, ...)."""


class RequestTimeout(TimeoutError):
    """No reply within request_timeout_s. The connection and the episode are kept; call again."""


class EpisodeReset(ConnectionError):
    """The connection was lost and re-established: the server started a NEW episode for this client."""


class WebsocketClientPolicy:
    def __init__(self, host: str = "127.0.0.1", port: int = 8000, *, reconnect_timeout_s: float = 30.0,
                 request_timeout_s: float | None = 60.0, max_message_bytes: int = 64 * 2**20,
                 auth_token: str | None = None, on_reset: Callable[[EpisodeReset], None] | None = None,
                 raise_on_reset: bool = False) -> None:
        self.uri = f"ws://{host}:{int(port)}"
        self.reconnect_timeout_s = float(reconnect_timeout_s)
        self.request_timeout_s = request_timeout_s
        self.max_message_bytes = int(max_message_bytes)
        self.on_reset = on_reset
        self.raise_on_reset = bool(raise_on_reset)
        self.reconnects = 0  # times a lost connection was re-established (each one reset the episode)
        self.timeouts = 0  # requests that raised RequestTimeout
        self._headers = {AUTH_HEADER: f"Bearer {auth_token}"} if auth_token else {}
        self._seq = 0
        self._unread = 0  # replies owed by the server on this connection and not read yet
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
                                   open_timeout=max(1.0, min(10.0, timeout_s)), additional_headers=self._headers,
                                   **_CONNECT_EXTRA)
                self._unread = 0
                meta = unpackb(self._ws.recv(timeout=self.request_timeout_s))
                if not isinstance(meta, dict) or meta.get("type") != "metadata":
                    raise ServerError(f"expected the server's metadata on connect, got {meta!r:.200}")
                self._metadata = meta
                return
            except InvalidStatus as e:
                if e.response.status_code in (401, 403):  # retrying cannot help: say why at once
                    raise ConnectionError(f"{self.uri} refused this client (HTTP {e.response.status_code}: "
                                          f"{(e.response.body or b'')[:200]!r}); check auth_token / serve.allowed_origins") from e
                self._retry_or_raise(e, deadline, delay)
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as e:
                self._retry_or_raise(e, deadline, delay)
            delay = min(1.0, delay * 2)

    def _retry_or_raise(self, e: Exception, deadline: float, delay: float) -> None:
        if isinstance(e, InvalidURI) or time.monotonic() + delay > deadline:
            raise ConnectionError(f"cannot reach a vla-accel server at {self.uri}: {e}") from e
        time.sleep(delay)

    def _round_trip(self, message: dict) -> dict:
        """Send, then read replies until this request's own: replies to earlier requests that timed out
        come first (the server answers in order) and are discarded."""
        self._ws.send(packb(message))
        self._unread += 1
        deadline = None if self.request_timeout_s is None else time.monotonic() + self.request_timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                raw = self._ws.recv(timeout=left)
            except TimeoutError:
                self.timeouts += 1
                raise RequestTimeout(f"no reply from {self.uri} within {self.request_timeout_s} s (seq "
                                     f"{message['seq']}); the connection is kept, the next call discards the "
                                     "late reply") from None
            self._unread -= 1
            if self._unread == 0:
                return unpackb(raw)

    def _request(self, message: dict) -> dict:
        self._seq += 1
        message = {**message, "seq": self._seq}
        try:
            if self._ws is None:
                raise ConnectionError("not connected")
            return self._check(self._round_trip(message), message["seq"])
        except RequestTimeout:
            raise  # a slow reply, not a lost link (TimeoutError is an OSError: caught first, on purpose)
        except (ConnectionClosed, ConnectionError, OSError) as e:
            self._reconnect(e)  # raises EpisodeReset when raise_on_reset
        self._seq += 1
        message = {**message, "seq": self._seq}
        reply = self._check(self._round_trip(message), message["seq"])
        return {**reply, "episode_reset": True}

    def _reconnect(self, cause: Exception) -> None:
        """Re-establish a lost connection and report the episode reset it implies (never silently)."""
        self.close()
        self._connect(self.reconnect_timeout_s)
        self.reconnects += 1
        event = EpisodeReset(f"the connection to {self.uri} was lost ({type(cause).__name__}: {str(cause)[:200]}) "
                             "and re-established: the server started a new episode for this client")
        log.warning("%s", event)
        if self.on_reset is not None:
            self.on_reset(event)
        if self.raise_on_reset:
            raise event from cause

    @staticmethod
    def _check(reply: Any, seq: int) -> dict:
        if not isinstance(reply, dict):
            raise ServerError(f"unexpected reply {reply!r:.200}")
        if reply.get("type") == "error":
            raise ServerError(str(reply.get("error", "unknown server error"))[:2000])
        if reply.get("seq") != seq:
            raise ServerError(f"reply out of order: sent seq {seq}, got {reply.get('seq')}")
        return reply
