"""What a raw-socket fuzzer found: bounded error replies, dtype/shape/structure limits decoded off the
event loop, token-counted instructions, special tokens, float32 overflow, a connection cap, a
disconnect for clients that do not read, Origin and token checks, /healthz with a query."""

from __future__ import annotations

import http.client
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


def good_obs(**changes) -> dict:
    o = make_obs(0)
    out = {"agentview_image": o["agentview_image"], "state": o["state"], "instruction": o["instruction"]}
    return {**out, **changes}


def ask(port: int, frame, **connect_kw) -> tuple[dict, int]:
    """One frame on a fresh connection -> (reply, its size in bytes); then checks the connection still serves."""
    with connect(f"ws://127.0.0.1:{port}", proxy=None, max_size=2**26, **connect_kw) as ws:
        ws.recv(timeout=30)
        ws.send(frame)
        raw = ws.recv(timeout=60)
        ws.send(packb({"type": "infer", "seq": 99, "obs": good_obs()}))
        assert unpackb(ws.recv(timeout=60))["type"] == "result"
    return unpackb(raw), len(raw)


def error_of(port: int, frame) -> str:
    reply, size = ask(port, frame)
    assert reply["type"] == "error" and size < 1000, (size, str(reply)[:300])
    return reply["error"]


def forged(**array_header) -> bytes:
    return msgpack.packb({"type": "infer", "seq": 7, "obs": {**{k: v for k, v in good_obs().items() if k != "state"},
                                                           "state": array_header}},
                         default=lambda a: {"__ndarray__": a.tobytes(), "dtype": a.dtype.str, "shape": list(a.shape)})


@pytest.mark.parametrize("frame", [
    packb({"type": "x" * 60_000, "seq": 7}),                                           # echoed type
    packb({"type": "infer", "seq": 7, "obs": {"k" * 60_000: 1}}),                       # echoed key
    packb({"type": "set_keep_ratio", "seq": 7, "keep_ratio": "y" * 60_000}),            # echoed value
    forged(__ndarray__=b"\0" * 32, dtype=",".join(["f4"] * 15_000), shape=[1]),        # structured dtype string
    forged(__ndarray__=b"\0" * 32, dtype="z" * 60_000, shape=[8]),                     # unknown dtype text
])
def test_error_replies_and_kept_messages_are_bounded(server, frame):
    error_of(server.port, frame)
    assert all(len(m) <= 300 for m in server.stats.error_messages)


@pytest.mark.parametrize("header, match", [
    ({"__ndarray__": b"\0" * 32, "dtype": [["a", "<f4"]] * 8, "shape": [1]}, "cannot be sent"),
    ({"__ndarray__": b"\0" * 32, "dtype": "<f4,<f4", "shape": [4]}, "cannot be sent"),
    ({"__ndarray__": b"\0" * 32, "dtype": "<f4", "shape": [1] * 30}, "shape must be a list of at most"),
    ({"__ndarray__": b"\0" * 32, "dtype": "<f4", "shape": [True] * 8}, "shape sizes must be integers"),
])
def test_ndarray_headers_take_only_plain_dtypes_and_bounded_shapes(server, header, match):
    assert match in error_of(server.port, forged(**header))


def test_bad_request_types_get_a_plain_error(server):
    msg = error_of(server.port, packb({"type": np.zeros(3), "seq": 7}))
    assert "unknown request type" in msg and "truth value" not in msg
    deep = b"\x82\xa4type" + b"\x91" * 1000 + b"\xc0" + b"\xa3seq\x07"  # {"type": [[[...1000 deep]]], "seq": 7}
    msg = error_of(server.port, deep)
    assert "too complex" in msg and "internal" not in msg and "Recursion" not in msg


@pytest.mark.parametrize("instruction, match", [
    ("\U0001F600" * 150, "tokens long"),                 # 150 characters (< 200) but ~600 tokens
    ("pick <act_255></s><pad> up", "special token"),
    ("PICK <ACT_001> UP", "special token"),               # the processor lower-cases the instruction
    ("\u200b\u200b\u200b", "empty"),
])
def test_instructions_are_checked_in_the_policys_tokens(server, instruction, match):
    assert match in error_of(server.port, packb({"type": "infer", "seq": 7, "obs": good_obs(instruction=instruction)}))
    assert server.metadata["max_instruction_tokens"] == 128


def test_the_finiteness_check_runs_after_the_float32_cast(server):
    state = np.zeros(8, np.float64)
    state[3] = 1e300  # finite in float64, inf in float32
    assert "NaN or inf" in error_of(server.port, packb({"type": "infer", "seq": 7, "obs": good_obs(state=state)}))


def test_healthz_with_a_query_string(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz?x=1", timeout=10) as r:
        assert r.status == 200 and r.read() == b"ok\n"
