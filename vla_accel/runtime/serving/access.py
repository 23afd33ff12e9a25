"""Who may talk to the policy server: one check for the websocket handshake and the REST endpoint.

- Origin: a browser sends an ``Origin`` header with every websocket handshake and cross-site POST; a
  web page open on the robot's computer could otherwise drive the robot through a loopback server.
  Requests carrying an Origin are refused (403) unless it is listed in ``serve.allowed_origins``;
  robot code (websockets, requests, urllib) sends none and is not affected.
- Token: with ``serve.auth_token`` set (required off loopback), a request must carry
  ``Authorization: Bearer <token>`` (compared in constant time) or is refused (401). No TLS here: on
  a network that is not trusted, put the server behind a TLS-terminating proxy.
``GET /healthz`` stays open (it tells nothing but "ok").
"""

from __future__ import annotations

import hmac
import http
from typing import Callable

from vla_accel.runtime.serving.serve_config import ServeConfig

Refusal = tuple[http.HTTPStatus, str]


def refusal(values: Callable[[str], list[str]], config: ServeConfig) -> Refusal | None:
    """values(header name, lower case) -> that header's values. None: let the request through."""
    origins = values("origin")
    if len(origins) > 1:
        return http.HTTPStatus.BAD_REQUEST, "more than one Origin header\n"
    if origins and origins[0] not in config.allowed_origins:
        return http.HTTPStatus.FORBIDDEN, "this Origin is not allowed (serve.allowed_origins)\n"
    if config.auth_token:
        auth = values("authorization")
        scheme, _, token = (auth[0] if len(auth) == 1 else "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.auth_token.encode()):
            return http.HTTPStatus.UNAUTHORIZED, "missing or wrong token (Authorization: Bearer <serve.auth_token>)\n"
    return None
