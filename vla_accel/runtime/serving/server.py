"""The policy server: websocket + msgpack (numpy arrays without pickle), openpi's shape.

    server = PolicyServer(policy, ServeConfig(port=8000))
    server.serve_forever()                        # or: port = server.start_in_thread(); ...; server.stop()

- On connect it sends its metadata (vla_accel.runtime.client.protocol); ``GET /healthz`` answers 200 "ok".
  With ``rest_port`` set it also serves OpenVLA's REST ``POST /act`` (serving/rest.py).
- Each connection is its own episode: it gets ``fork_episode(policy)`` -- a view with the same weights
  (nothing copied) and its own runner (temporal pruning history, token-reuse memory), action queue,
  ensemble and noise generator. A ``reset`` request resets that connection's episode only.
- Inference is serialised: every model call of every connection runs on ONE worker thread, so the
  model is never run concurrently (the views share modules). Decoding and checking a request run on a
  second thread (the decoder), so the event loop stays free to answer /healthz and other connections
  while a hostile request is being refused. A connection's requests are answered in order, one reply
  per request.
- A bad request gets ``{"type": "error", "seq", "error"}`` (the error text is bounded: it quotes a few
  dozen characters of the bad value at most) and the connection stays usable: bad msgpack, text
  frames, unknown types, missing keys, wrong image shape/dtype, non-numeric or structured dtypes,
  NaN/inf state, empty, too long (characters or tokens) or special-token instructions, payloads over
  ``max_message_bytes``. A frame over the transport limit (``transport_max_bytes``, websockets'
  ``max_size``) is refused by websockets itself, which closes that connection with code 1009.
- Bounded per connection and in all: at most ``max_connections`` at once (more get HTTP 503), at most
  ``max_queued_frames`` requests read ahead, and a client that does not read its replies is
  disconnected when a reply cannot be sent within ``send_timeout_s`` (its backlog is then the socket
  buffers plus one reply). A client that disconnects mid-request: the inference finishes, its reply is
  dropped, the episode is discarded.
- Access (serving/access.py): requests with a browser ``Origin`` are refused (403) unless allowed by
  ``allowed_origins``; with ``auth_token`` set (required off loopback) a request without
  ``Authorization: Bearer <token>`` is refused (401).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import http
import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from vla_accel import __version__
from vla_accel.policies.call_styles import accel_stats, infer
from vla_accel.runtime.client.msgpack_numpy import WireFormatError, packb, unpackb
from vla_accel.runtime.client.protocol import PROTOCOL_VERSION
from vla_accel.runtime.episode_fork import fork_episode
from vla_accel.runtime.serving.access import refusal
from vla_accel.runtime.serving.serve_config import ServeConfig, is_loopback
from vla_accel.runtime.serving.validation import (MAX_ERROR_CHARS, ObsSpec, RequestError, check_keep_ratio,
                                                  check_obs, check_request)

log = logging.getLogger(__name__)
N_ERROR_MESSAGES = 20


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


def instruction_tokens(policy: Any, limit: int) -> tuple[Callable[[str], list[int]] | None, frozenset, int]:
    """(tokenize, special ids, token limit) from the policy's tokenizer. The server's own copy: it runs on
    the decoder thread while the worker tokenises prompts with the original. The limit is also capped
    at half the model's positions (the prompt holds the image tokens and the action too)."""
    tokenizer = getattr(policy, "tokenizer", None)
    if tokenizer is None or not callable(tokenizer):
        return None, frozenset(), limit
    tokenizer = copy.deepcopy(tokenizer)
    config = getattr(policy, "config", None)
    lower = bool(getattr(config, "lowercase_instruction", False))
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})  # action tokens are added tokens

    def tokenize(text: str) -> list[int]:
        text = text.strip().lower() if lower else text.strip()  # as the processor will see it
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    positions = getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 1:
        limit = min(limit, positions // 2)
    return tokenize, frozenset(special), limit


@dataclass
class ServerStats:
    connections: int = 0
    open_connections: int = 0  # websocket and REST
    requests: int = 0
    errors: int = 0
    inferences: int = 0
    dropped_replies: int = 0  # replies whose client was gone when they were ready
    refused: int = 0  # handshakes refused: Origin, token, too many connections
    slow_clients_closed: int = 0  # connections closed because they did not read their replies
    error_messages: list[str] = field(default_factory=list)  # the last few (bounded), for logs and tests

    def error(self, text: str) -> str:
        self.errors += 1
        text = text[:MAX_ERROR_CHARS]
        self.error_messages = (self.error_messages + [text])[-N_ERROR_MESSAGES:]
        return text


class PolicyServer:
    def __init__(self, policy: Any, config: ServeConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ServeConfig()
        meta = policy_metadata(policy)
        tokenize, special, token_limit = instruction_tokens(policy, self.config.max_instruction_tokens)
        self.spec = ObsSpec(image_size=meta["image_size"], cameras=tuple(meta["cameras"]),
                            max_instruction_chars=self.config.max_instruction_chars,
                            max_instruction_tokens=token_limit, tokenize=tokenize, special_ids=special)
        self.metadata = {"type": "metadata", "protocol": PROTOCOL_VERSION, "server_version": __version__, **meta,
                         "max_message_bytes": self.config.max_message_bytes,
                         "max_instruction_chars": self.config.max_instruction_chars,
                         "max_instruction_tokens": token_limit}
        self.stats = ServerStats()
        # ONE worker thread: the only place the model runs
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-accel-infer")
        # decoding + checking requests, off the event loop and never queued behind an inference
        self.decoder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-accel-decode")
        self._server: Server | None = None
        self._rest = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port: int | None = None
        self.rest_port: int | None = None

    # ---------------------------------------------------------------------------------- lifecycle
    async def _start(self) -> Server:
        cfg = self.config
        if not is_loopback(cfg.host):
            log.warning("serving on %s: other machines can connect (token required; no TLS: use a trusted "
                        "network or a TLS proxy)", cfg.host)
        self._server = await serve(self._connection, cfg.host, cfg.port, process_request=self._process_request,
                                   max_size=cfg.transport_limit, max_queue=cfg.max_queued_frames,
                                   compression=None, ping_interval=cfg.ping_interval_s)
        self.port = self._server.sockets[0].getsockname()[1]
        if cfg.rest_port is not None:
            from vla_accel.runtime.serving.rest import RestEndpoint

            self._rest = RestEndpoint(self)
            self.rest_port = await self._rest.start(cfg.host, cfg.rest_port)
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
        try:
            await server.serve_forever()
        finally:
            if self._rest is not None:
                self._rest.close()

    def serve_forever(self, on_ready: Callable[[int], None] | None = None) -> None:
        try:
            asyncio.run(self.run_async(on_ready))
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
        finally:
            self.decoder.shutdown(wait=True)
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

    # ---------------------------------------------------------------------------------- access
    def admit(self, values: Callable[[str], list[str]]) -> tuple[http.HTTPStatus, str] | None:
        """None, or why a new connection (websocket handshake or REST request) is refused."""
        refused = refusal(values, self.config)
        if refused is None and self.stats.open_connections >= self.config.max_connections:
            refused = http.HTTPStatus.SERVICE_UNAVAILABLE, f"too many connections (serve.max_connections=" \
                                                           f"{self.config.max_connections})\n"
        if refused is not None:
            self.stats.refused += 1
        return refused

    def _process_request(self, connection: ServerConnection, request):
        if urlsplit(request.path).path == "/healthz":  # a query string (?x=1) is not a handshake either
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        refused = self.admit(lambda name: request.headers.get_all(name))
        if refused is not None:
            return connection.respond(*refused)
        return None  # everything else: the websocket handshake

    # ---------------------------------------------------------------------------------- protocol
    async def in_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def in_decoder(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.decoder, fn, *args)

    async def _send(self, ws: ServerConnection, message: dict) -> None:
        """Send one reply; a client that does not take it within send_timeout_s is disconnected (its
        unread replies and read-ahead requests would otherwise stay in this process's memory)."""
        try:
            await asyncio.wait_for(ws.send(packb(message)), self.config.send_timeout_s)
        except asyncio.TimeoutError:
            self.stats.slow_clients_closed += 1
            log.warning("closing a connection that does not read its replies (%s s)", self.config.send_timeout_s)
            ws.transport.abort()
            raise ConnectionClosed(None, None) from None

    async def _connection(self, ws: ServerConnection) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        try:
            episode = await self.in_worker(fork_episode, self.policy)  # this connection's own episode
            await self._send(ws, self.metadata)
            async for raw in ws:
                reply = await self._answer(episode, raw)
                try:
                    await self._send(ws, reply)
                except ConnectionClosed:
                    self.stats.dropped_replies += 1
                    raise
        except ConnectionClosed:
            pass  # the client went away (mid-request or between requests): drop its episode
        finally:
            self.stats.open_connections -= 1

    def parse(self, raw: bytes | str) -> tuple[str, int | None, dict, dict | None]:
        """On the decoder thread: frame -> (type, seq, message, checked obs or None), or RequestError."""
        if isinstance(raw, str):
            raise RequestError("send binary msgpack frames, not text")
        if len(raw) > self.config.max_message_bytes:
            raise RequestError(f"request of {len(raw)} bytes exceeds serve.max_message_bytes="
                               f"{self.config.max_message_bytes}")
        try:
            msg = unpackb(raw)
        except WireFormatError as e:
            raise RequestError(str(e)) from None
        kind, seq = check_request(msg)
        obs = check_obs(msg.get("obs"), self.spec, seq) if kind in ("infer", "select_action") else None
        return kind, seq, msg, obs

    async def _answer(self, episode: Any, raw: bytes | str) -> dict:
        self.stats.requests += 1
        seq = None
        try:
            kind, seq, msg, obs = await self.in_decoder(self.parse, raw)
            return {"seq": seq, **await self._run(episode, kind, msg, obs, seq)}
        except RequestError as e:
            return {"type": "error", "seq": e.seq if e.seq is not None else seq, "error": self.stats.error(str(e))}
        except ValueError as e:  # the policy's own input checks
            return {"type": "error", "seq": seq, "error": self.stats.error(f"{type(e).__name__}: {e}")}
        except Exception as e:  # a bug or a model failure: report it, keep serving
            return {"type": "error", "seq": seq, "error": self.internal_error(e)}

    def internal_error(self, e: Exception) -> str:
        """Bounded, in the reply and the log: the message may quote client data, the stack frames do not."""
        text = self.stats.error(f"internal error: {type(e).__name__}: {e}")
        log.error("request failed: %s\n%s", text, "".join(traceback.format_tb(e.__traceback__))[-4000:])
        return text

    async def _run(self, episode: Any, kind: str, msg: dict, obs: dict | None, seq: int | None) -> dict:
        if kind == "metadata":
            return dict(self.metadata)
        if kind == "reset":
            await self.in_worker(episode.reset)
            return {"type": "reset_done"}
        if kind == "set_keep_ratio":
            from vla_accel.runtime.budget import set_keep_ratio

            keep = await self.in_worker(set_keep_ratio, episode, check_keep_ratio(msg, seq))
            return {"type": "ok", "keep_ratio": keep}
        queued = time.perf_counter()
        call = infer if kind == "infer" else _select_action
        out, started = await self.in_worker(_timed, call, episode, obs)
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
