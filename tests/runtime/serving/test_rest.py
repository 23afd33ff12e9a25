"""OpenVLA's REST convention (`POST /act`, json_numpy bodies) served next to the websocket, reached
with a plain HTTP client; the same checks, limits and access rules."""

from __future__ import annotations

import base64
import http.client
import json

import numpy as np
import pytest
from fixtures.tiny_models import obs as make_obs

from vla_accel.runtime.episode_fork import fork_episode

TOKEN = "rest-token-for-the-tests-0123"


def as_json_numpy(a: np.ndarray) -> dict:
    """Written out by hand, as json_numpy 2.x's `default` does (not through the module under test)."""
    return {"__numpy__": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(), "dtype": a.dtype.str,
            "shape": list(a.shape)}


def from_json_numpy(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["__numpy__"]), np.dtype(d["dtype"])).reshape(d["shape"])


@pytest.fixture(scope="module")
def rest(pruned_openvla):
    from vla_accel.runtime.serving.server import PolicyServer, ServeConfig

    srv = PolicyServer(pruned_openvla, ServeConfig(port=0, rest_port=0, max_message_bytes=64 * 1024,
                                                   allowed_origins=("http://ok.local",)))
    srv.start_in_thread()
    yield srv
    srv.stop()


def post(port: int, body: bytes, path: str = "/act", headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def payload(**changes) -> dict:
    o = make_obs(0)
    return {"image": as_json_numpy(o["agentview_image"]), "instruction": o["instruction"], **changes}


def test_post_act_answers_the_action_of_a_fresh_episode(rest, pruned_openvla):
    o = make_obs(0)
    expected = fork_episode(pruned_openvla).predict_action(o["agentview_image"], o["instruction"])
    for body in (payload(), payload(unnorm_key="spatial")):
        status, raw = post(rest.rest_port, json.dumps(body).encode())
        assert status == 200, raw
        np.testing.assert_allclose(from_json_numpy(json.loads(raw)), expected, rtol=1e-5, atol=1e-6)
    # deploy.py's "double-encoded" form: the payload as a json_numpy string, the reply the same way
    status, raw = post(rest.rest_port, json.dumps({"encoded": json.dumps(payload())}).encode())
    assert status == 200
    np.testing.assert_allclose(from_json_numpy(json.loads(json.loads(raw))), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("body, status, match", [
    (b"{not json", 400, "malformed JSON"),
    (json.dumps(payload(instruction="")).encode(), 400, "empty"),
    (json.dumps(payload(instruction="\U0001F600" * 150)).encode(), 400, "tokens long"),
    (json.dumps(payload(image=as_json_numpy(np.zeros((16, 16, 3), np.uint8)))).encode(), 400, "must be 32x32"),
    (json.dumps(payload(image={"__numpy__": "AAAA", "dtype": ",".join(["f4"] * 9000), "shape": [1]})).encode(), 400,
     "cannot be sent"),
    (json.dumps(payload(unnorm_key="nope")).encode(), 400, "unknown unnorm_key"),
    (json.dumps(payload(extra=1)).encode(), 400, "unknown keys"),
    (b"[" * 5000 + b"]" * 5000, 400, "nested too deeply|malformed"),
    (b"x" * 70_000, 413, "max_message_bytes"),
])
def test_bad_bodies_get_a_bounded_error(rest, body, status, match):
    import re

    got, raw = post(rest.rest_port, body)
    assert got == status and len(raw) < 1000, raw[:300]
    assert re.search(match, json.loads(raw)["error"])
    assert post(rest.rest_port, json.dumps(payload()).encode())[0] == 200  # and the endpoint keeps serving


def test_rest_access_rules(rest, pruned_openvla):
    from vla_accel.runtime.serving.server import PolicyServer, ServeConfig

    body = json.dumps(payload()).encode()
    assert post(rest.rest_port, body, headers={"Origin": "http://evil.example"})[0] == 403
    assert post(rest.rest_port, body, headers={"Origin": "http://ok.local"})[0] == 200
    assert post(rest.rest_port, body, path="/nope")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", rest.rest_port, timeout=30)
    conn.request("GET", "/healthz?probe=1")
    assert conn.getresponse().read() == b"ok\n"
    conn.close()
    locked = PolicyServer(pruned_openvla, ServeConfig(port=0, rest_port=0, auth_token=TOKEN))
    locked.start_in_thread()
    try:
        assert post(locked.rest_port, body)[0] == 401
        assert post(locked.rest_port, body, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert post(locked.rest_port, body, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        locked.stop()


def test_json_numpy_codec_round_trip():
    from vla_accel.runtime.client import json_numpy

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = json_numpy.loads(json_numpy.dumps({"a": a, "s": np.float32(2.5), "n": [1, "x"]}))
    assert back["a"].dtype == a.dtype and np.array_equal(back["a"], a)
    assert isinstance(back["s"], np.floating) and back["s"] == 2.5 and back["n"] == [1, "x"]
    old = {"__ndarray__": as_json_numpy(a)["__numpy__"], "dtype": "<f4", "shape": [3, 4]}  # the older key
    assert np.array_equal(json_numpy.loads(json.dumps(old)), a)
