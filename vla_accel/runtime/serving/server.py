"""The policy server: websocket + msgpack (numpy arrays without pickle), openpi's shape.

    server = PolicyServer(policy, ServeConfig(port=8000))
    server.serve_forever()                        # or: port = server.start_in_thread(); ...; server.stop()

- On connect it sends its metadata (vla_accel.runtime.client.protocol); ``GET /healthz`` answers 200 "ok".
- Each connection is its own episode: it gets ``fork_episode(policy)`` -- a view with the same weights
  (nothing copied) and its own runner (temporal pruning history, token-reuse memory), action queue,
  ensemble and noise generator. A ``reset`` request resets that connection's episode only.
- Inference is serialised: every model call of every connection runs on ONE worker thread, so the
  model is never run concurrently (the views share modules); the event loop stays free to read, check
  and reject requests meanwhile. A connection's requests are answered in order.
- A bad request gets ``{"type": "error", "seq", "error"}`` and the connection stays usable: bad msgpack,
  text frames, unknown types, missing keys, wrong image shape/dtype, NaN/inf state, empty or too long
  instructions, payloads over ``max_message_bytes``. A frame over the transport limit
  (``transport_max_bytes``, websockets' ``max_size``) is refused by websockets itself, which closes that
  connection with code 1009 "message too big"; other connections are untouched. A client that
  disconnects mid-request: the inference finishes, its reply is dropped, the episode is discarded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from vla_accel import __version__
from vla_accel.runtime.client.msgpack_numpy import WireFormatError, packb, unpackb
from vla_accel.runtime.client.protocol import PROTOCOL_VERSION
from vla_accel.policies.call_styles import accel_stats, infer
from vla_accel.runtime.episode_fork import fork_episode
from vla_accel.runtime.serving.validation import (ObsSpec, RequestError, check_keep_ratio, check_obs, check_request,
                                          request_seq)

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: an ephemeral port (see PolicyServer.port)
    max_message_bytes: int = 4 * 2**20  # larger requests get an error reply
    transport_max_bytes: int | None = None  # websockets' max_size (None: 4x max_message_bytes)
    max_instruction_chars: int = 512
    ping_interval_s: float | None = 20.0  # websockets keepalive (None: off)

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) < 65536:
            raise ValueError(f"serve.port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"serve.max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.transport_max_bytes is not None and self.transport_max_bytes < self.max_message_bytes:
            raise ValueError("serve.transport_max_bytes must be >= serve.max_message_bytes")
        if self.max_instruction_chars < 1:
            raise ValueError(f"serve.max_instruction_chars must be >= 1, got {self.max_instruction_chars}")

    @property
    def transport_limit(self) -> int:
        return self.transport_max_bytes or 4 * self.max_message_bytes


def policy_metadata(policy: Any) -> dict[str, Any]:
    """What a client needs to know about the served policy (sent on connect)."""
    config = getattr(policy, "config", None)
    accel = getattr(policy, "accel_config", None)
    return {
        "policy_type": getattr(policy, "model_type", type(policy).__name__),
        "policy_class": type(policy).__name__,
        "action_dim": int(getattr(config, "action_dim", 7)),
        "action_horizon": int(getattr(config, "chunk_size", 1)),  # actions per infer() (OpenVLA-style: 1)
        "image_size": getattr(config, "input_image_size", None),
        "cameras": list(getattr(config, "cameras", ["agentview"])),
        "accel": accel.to_dict() if accel is not None and hasattr(accel, "to_dict") else None,
        "unnorm_key": getattr(policy, "unnorm_key", None),
    }


@dataclass
class ServerStats:
    connections: int = 0
    open_connections: int = 0
    requests: int = 0
    errors: int = 0
    inferences: int = 0
    dropped_replies: int = 0  # replies whose client was gone when they were ready
    error_messages: list[str] = field(default_factory=list)  # the last few, for logs and tests


class PolicyServer:
    def __init__(self, policy: Any, config: ServeConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ServeConfig()
        meta = policy_metadata(policy)
        self.spec = ObsSpec(image_size=meta["image_size"], cameras=tuple(meta["cameras"]),
                            max_instruction_chars=self.config.max_instruction_chars)
        self.metadata = {"type": "metadata", "protocol": PROTOCOL_VERSION, "server_version": __version__, **meta,
                         "max_message_bytes": self.config.max_message_bytes,
                         "max_instruction_chars": self.config.max_instruction_chars}
        self.stats = ServerStats()
        # ONE worker thread: the only place the model runs
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-accel-infer")
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port: int | None = None

    # ---------------------------------------------------------------------------------- lifecycle
    async def _start(self) -> Server:
        self._server = await serve(self._connection, self.config.host, self.config.port,
                                   process_request=self._process_request, max_size=self.config.transport_limit,
                                   compression=None, ping_interval=self.config.ping_interval_s)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    async def run_async(self, on_ready: Callable[[int], None] | None = None) -> None:
        server = await self._start()
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():  # SIGTERM/SIGINT: close cleanly
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, server.close)
        self._ready.set()
        if on_ready is not None:
            on_ready(self.port)
        await server.serve_forever()

    def serve_forever(self, on_ready: Callable[[int], None] | None = None) -> None:
        try:
            asyncio.run(self.run_async(on_ready))
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
        finally:
            self._worker.shutdown(wait=True)

    def start_in_thread(self, timeout_s: float = 30.0) -> int:
        """Serve from a daemon thread (tests, notebooks); returns the bound port."""
        self._thread = threading.Thread(target=self.serve_forever, name="vla-accel-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the policy server did not start")
        return self.port

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ---------------------------------------------------------------------------------- protocol
    def _process_request(self, connection: ServerConnection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        return None  # everything else: the websocket handshake

    async def _in_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def _connection(self, ws: ServerConnection) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        episode = None
        try:
            episode = await self._in_worker(fork_episode, self.policy)  # this connection's own episode
            await ws.send(packb(self.metadata))
            async for raw in ws:
                reply = await self._answer(episode, raw)
                try:
                    await ws.send(packb(reply))
                except ConnectionClosed:
                    self.stats.dropped_replies += 1
                    raise
        except ConnectionClosed:
            pass  # the client went away (mid-request or between requests): drop its episode
        finally:
            self.stats.open_connections -= 1

    async def _answer(self, episode: Any, raw: bytes | str) -> dict:
        self.stats.requests += 1
        seq = None
        try:
            if isinstance(raw, str):
                raise RequestError("send binary msgpack frames, not text")
            if len(raw) > self.config.max_message_bytes:
                raise RequestError(f"request of {len(raw)} bytes exceeds serve.max_message_bytes="
                                   f"{self.config.max_message_bytes}")
            try:
                msg = unpackb(raw)
            except WireFormatError as e:
                raise RequestError(str(e)) from None
            seq = request_seq(msg)
            kind, seq = check_request(msg)
            return {"seq": seq, **await self._run(episode, kind, msg, seq)}
        except (RequestError, ValueError) as e:  # ValueError: the policy's own input checks
            self.stats.errors += 1
            text = f"{type(e).__name__}: {e}" if not isinstance(e, RequestError) else str(e)
            self.stats.error_messages = (self.stats.error_messages + [text])[-20:]
            return {"type": "error", "seq": seq, "error": text}
        except Exception as e:  # a bug or a model failure: report it, keep serving
            self.stats.errors += 1
            log.exception("request failed")
            return {"type": "error", "seq": seq, "error": f"internal error: {type(e).__name__}: {e}"}

    async def _run(self, episode: Any, kind: str, msg: dict, seq: int | None) -> dict:
        if kind == "metadata":
            return dict(self.metadata)
        if kind == "reset":
            await self._in_worker(episode.reset)
            return {"type": "reset_done"}
        if kind == "set_keep_ratio":
            from vla_accel.runtime.budget import set_keep_ratio

            keep = await self._in_worker(set_keep_ratio, episode, check_keep_ratio(msg, seq))
            return {"type": "ok", "keep_ratio": keep}
        obs = check_obs(msg.get("obs"), self.spec, seq)
        queued = time.perf_counter()
        call = infer if kind == "infer" else _select_action
        out, started = await self._in_worker(_timed, call, episode, obs)
        done = time.perf_counter()
        self.stats.inferences += 1
        return {"type": "result", **out,
                "server_timing": {"queue_ms": (started - queued) * 1e3, "infer_ms": (done - started) * 1e3}}


def _timed(fn, *args) -> tuple[Any, float]:
    """Run in the worker: (result, perf_counter when the worker picked the call up)."""
    started = time.perf_counter()
    return fn(*args), started


def _select_action(policy: Any, obs: dict) -> dict:
    """LeRobot's call on the connection's episode; "ran_model": whether this call predicted a new chunk
    (the runner makes a new stats record at every prefill)."""
    import numpy as np

    before = getattr(policy.runner, "stats", None)
    start = time.perf_counter()
    action = np.asarray(policy.select_action(obs), dtype=np.float32)
    out = {"action": action, "policy_timing": {"infer_ms": (time.perf_counter() - start) * 1e3},
           "ran_model": getattr(policy.runner, "stats", None) is not before}
    stats = accel_stats(policy)
    if out["ran_model"] and stats is not None:
        out["accel_stats"] = stats
    return out
