"""OpenVLA's REST convention next to the websocket endpoint: ``POST /act`` on ``serve.rest_port``.

    import json_numpy, requests; json_numpy.patch()
    action = requests.post("http://127.0.0.1:8001/act",
                           json={"image": img, "instruction": "open the drawer", "unnorm_key": None}).json()

As OpenVLA's ``vla-scripts/deploy.py``: a JSON body whose arrays are json_numpy maps
(``{"__numpy__": base64, "dtype", "shape"}``; vla_accel.runtime.client.json_numpy), keys ``image``
((H, W, 3) uint8), ``instruction``, optional ``unnorm_key`` (and ``wrist_image`` for two-camera
models); the reply is the action as a json_numpy array, 200. ``{"encoded": "<json_numpy text>"}`` (the
"double-encoded" form) gets the reply encoded the same way. Each request is a fresh episode (OpenVLA's
REST has no episode state; use the websocket for temporal acceleration). Unlike deploy.py, a bad
request gets HTTP 400 with ``{"error": "<what was wrong>"}`` rather than 200 "error".

The same checks and limits as the websocket (validation.py, max_message_bytes -> 413), the same
access rules (access.py: Origin -> 403, token -> 401), the same connection cap (503), the same
decoder thread and the same single inference worker. HTTP/1.1 parsing is h11's; an idle or slow
connection is closed after IDLE_S.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import numpy as np

from vla_accel.runtime.client import json_numpy
from vla_accel.runtime.client.msgpack_numpy import WireFormatError, brief
from vla_accel.runtime.episode_fork import fork_episode
from vla_accel.runtime.serving.access import refusal
from vla_accel.runtime.serving.validation import RequestError, check_obs

IDLE_S = 30.0  # a connection that sends nothing (or too slowly) for this long is closed
PAYLOAD_KEYS = ("image", "instruction", "unnorm_key", "wrist_image")


class _TooLarge(Exception):
    pass


class RestEndpoint:
    def __init__(self, server) -> None:
        self.server = server  # the PolicyServer: its config, spec, stats, decoder and worker
        self._srv: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._srv = await asyncio.start_server(self._client, host, port)
        return self._srv.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._srv is not None:
            self._srv.close()

    # ---------------------------------------------------------------------------------- HTTP
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.server.stats
        over_cap = stats.open_connections >= self.server.config.max_connections
        stats.open_connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while conn.our_state is h11.IDLE or conn.our_state is h11.DONE:
                if conn.our_state is h11.DONE:
                    if conn.their_state is not h11.DONE:
                        break
                    conn.start_next_cycle()
                request = await self._event(conn, reader)
                if not isinstance(request, h11.Request):
                    break
                status, body = await self._route(conn, reader, request, over_cap)
                await self._respond(conn, writer, status, body, close=over_cap or status == 413)
        except (h11.ProtocolError, asyncio.TimeoutError, ConnectionError):
            pass  # a broken, idle or vanished client: just close
        finally:
            stats.open_connections -= 1
            writer.close()

    async def _event(self, conn: h11.Connection, reader: asyncio.StreamReader):
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await asyncio.wait_for(reader.read(65536), IDLE_S))

    async def _body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> bytes:
        body, limit = bytearray(), self.server.config.max_message_bytes
        while True:
            event = await self._event(conn, reader)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limit:
                    raise _TooLarge
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise h11.RemoteProtocolError("unexpected event in a request body")

    async def _route(self, conn, reader, request: h11.Request, over_cap: bool) -> tuple[int, bytes]:
        # the body is read (bounded) before any answer: closing on unread data would reset the
        # connection and the client could lose the answer
        try:
            body = await self._body(conn, reader)
        except _TooLarge:
            return 413, _error(f"request body exceeds serve.max_message_bytes={self.server.config.max_message_bytes}")
        path = request.target.split(b"?", 1)[0]
        if path == b"/healthz" and request.method in (b"GET", b"HEAD"):
            return 200, b"ok\n"
        if path != b"/act":
            return 404, _error("not found: POST /act (OpenVLA's REST) or GET /healthz")
        if request.method != b"POST":
            return 405, _error("use POST /act")
        if over_cap:
            self.server.stats.refused += 1
            return 503, _error(f"too many connections (serve.max_connections={self.server.config.max_connections})")
        headers = [(name.lower(), value.decode("latin-1")) for name, value in request.headers]
        refused = refusal(lambda n: [v for k, v in headers if k == n.encode()], self.server.config)
        if refused is not None:
            self.server.stats.refused += 1
            return int(refused[0]), _error(refused[1].strip())
        return await self._act(body)

    async def _respond(self, conn, writer, status: int, body: bytes, close: bool) -> None:
        kind = b"text/plain" if status == 200 and body == b"ok\n" else b"application/json"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        await asyncio.wait_for(writer.drain(), self.server.config.send_timeout_s)

    # ---------------------------------------------------------------------------------- /act
    async def _act(self, body: bytes) -> tuple[int, bytes]:
        srv = self.server
        srv.stats.requests += 1
        try:
            obs, unnorm_key, double = await srv.in_decoder(self.parse, body)
            action = await srv.in_worker(predict, srv.policy, obs, unnorm_key)
            srv.stats.inferences += 1
            text = json_numpy.dumps(action)
            return 200, (json.dumps(text) if double else text).encode()
        except RequestError as e:
            return 400, _error(srv.stats.error(str(e)))
        except ValueError as e:  # the policy's own checks (an unknown unnorm_key, ...)
            return 400, _error(srv.stats.error(f"{type(e).__name__}: {e}"))
        except Exception as e:  # a bug or a model failure: report it, keep serving
            return 500, _error(srv.internal_error(e))

    def parse(self, body: bytes) -> tuple[dict, str | None, bool]:
        """On the decoder thread: body -> (checked obs, unnorm_key, double-encoded?), or RequestError."""
        try:
            payload = json_numpy.loads(body)
            double = isinstance(payload, dict) and set(payload) == {"encoded"}
            if double:  # deploy.py's form for clients without json_numpy's patch
                if not isinstance(payload["encoded"], str):
                    raise RequestError("'encoded' must be a JSON string")
                payload = json_numpy.loads(payload["encoded"])
        except WireFormatError as e:
            raise RequestError(str(e)) from None
        if not isinstance(payload, dict):
            raise RequestError(f"the body must be a JSON object {{image, instruction, unnorm_key}}, got {brief(payload)}")
        unknown = [brief(k, 40) for k in payload if k not in PAYLOAD_KEYS]
        if unknown:
            raise RequestError(f"unknown keys {unknown[:5]}; valid: {', '.join(PAYLOAD_KEYS)}")
        key = payload.get("unnorm_key")
        if key is not None and (not isinstance(key, str) or len(key) > 128):
            raise RequestError(f"'unnorm_key' must be a short string or null, got {brief(key, 40)}")
        obs = {"agentview_image": payload.get("image"), "instruction": payload.get("instruction")}
        if "wrist_image" in payload:
            obs["wrist_image"] = payload["wrist_image"]
        if "image" not in payload or "instruction" not in payload:
            raise RequestError("the body needs 'image' ((H, W, 3) uint8, json_numpy) and 'instruction'")
        return check_obs(obs, self.server.spec), key, double


def predict(policy: Any, obs: dict, unnorm_key: str | None) -> np.ndarray:
    """In the worker: OpenVLA's predict_action on a fresh episode (REST requests share no state)."""
    episode = fork_episode(policy)
    if hasattr(episode, "predict_action"):
        return np.asarray(episode.predict_action(obs["agentview_image"], obs["instruction"], unnorm_key=unnorm_key,
                                                 wrist_image=obs.get("wrist_image")))
    from vla_accel.policies.call_styles import infer

    return np.asarray(infer(episode, obs)["actions"][0])


def _error(text: str) -> bytes:
    return json.dumps({"error": text}).encode()
