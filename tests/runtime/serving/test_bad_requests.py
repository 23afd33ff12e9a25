"""Every kind of bad request gets an error reply naming the problem, and the same connection then
serves the next good request; oversized frames and vanishing clients do not stop the server."""

from __future__ import annotations

import re
import time

import msgpack
import numpy as np
import pytest
from fixtures.tiny_models import obs as make_obs
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from vla_accel.runtime.client import WebsocketClientPolicy, packb, unpackb


def good_obs() -> dict:
    o = make_obs(0)
    return {"agentview_image": o["agentview_image"], "state": o["state"], "instruction": o["instruction"]}


def with_obs(**changes) -> bytes:
    o = good_obs()
    for k, v in changes.items():
        if v is KeyError:
            o.pop(k)
        else:
            o[k] = v
    return packb({"type": "infer", "seq": 7, "obs": o})


def raw_ndarray(dtype: str, shape: list, data: bytes) -> dict:
    return {"__ndarray__": data, "dtype": dtype, "shape": shape}


BAD = {
    "malformed msgpack": (b"\xc1\x00\x13garbage", "malformed msgpack"),
    "truncated msgpack": (packb({"type": "infer", "obs": good_obs()})[:-40], "malformed msgpack"),
    "text frame": ("hello", "binary msgpack"),
    "not a map": (packb([1, 2, 3]), "must be a msgpack map"),
    "unknown type": (packb({"type": "fly", "seq": 7}), "unknown request type 'fly'"),
    "bad seq": (packb({"type": "reset", "seq": "one"}), "'seq' must be an integer"),
    "no obs": (packb({"type": "infer", "seq": 7}), "'obs' must be a map"),
    "missing image": (with_obs(agentview_image=KeyError), "lacks \\['agentview_image'\\]"),
    "missing instruction": (with_obs(instruction=KeyError), "lacks \\['instruction'\\]"),
    "unknown key": (packb({"type": "infer", "obs": {**good_obs(), "depth": np.zeros(3)}}), "unknown observation keys"),
    "image wrong size": (with_obs(agentview_image=np.zeros((16, 16, 3), np.uint8)), "must be 32x32"),
    "image batched": (with_obs(agentview_image=np.zeros((2, 32, 32, 3), np.uint8)), "shape \\(H, W, 3\\)"),
    "image grey": (with_obs(agentview_image=np.zeros((32, 32), np.uint8)), "shape \\(H, W, 3\\)"),
    "image float": (with_obs(agentview_image=np.zeros((32, 32, 3), np.float32)), "dtype uint8"),
    "image as list": (with_obs(agentview_image=[[1, 2, 3]]), "must be an ndarray"),
    "object dtype": (msgpack.packb({"type": "infer", "obs": {**good_obs(), "state": raw_ndarray("|O", [1], b"\0" * 8)}},
                                   default=lambda a: raw_ndarray(a.dtype.str, list(a.shape), a.tobytes())),
                     "dtype object cannot be sent"),
    "bytes do not match shape": (msgpack.packb({"type": "infer", "obs": {"agentview_image": raw_ndarray("|u1", [32, 32, 3], b"\0" * 10)}}),
                                 "does not match 10 bytes"),
    "nan state": (with_obs(state=np.array([np.nan] + [0] * 7, np.float32)), "NaN or inf"),
    "inf state": (with_obs(state=np.array([0] * 7 + [np.inf], np.float32)), "NaN or inf"),
    "state wrong shape": (with_obs(state=np.zeros(3, np.float32)), "shape \\(8,\\)"),
    "state int": (with_obs(state=np.zeros(8, np.int64)), "float ndarray"),
    "empty instruction": (with_obs(instruction="   "), "instruction'\\] is empty"),
    "instruction not text": (with_obs(instruction=5), "must be a string"),
    "huge instruction": (with_obs(instruction="pick " * 100), "the limit is 200"),
    "payload over max_message_bytes": (with_obs(instruction="x" * 70_000), "exceeds serve.max_message_bytes"),
    "bad keep ratio": (packb({"type": "set_keep_ratio", "keep_ratio": 0}), "'keep_ratio' must be a number in \\(0, 1\\]"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_request_gets_an_error_and_the_connection_keeps_serving(server, name):
    frame, match = BAD[name]
    with connect(f"ws://127.0.0.1:{server.port}", proxy=None, max_size=2**22) as ws:
        assert unpackb(ws.recv(timeout=30))["type"] == "metadata"
        ws.send(frame)
        reply = unpackb(ws.recv(timeout=30))
        assert reply["type"] == "error"
        assert re.search(match, reply["error"]), reply["error"]
        ws.send(packb({"type": "infer", "seq": 8, "obs": good_obs()}))
        good = unpackb(ws.recv(timeout=30))
        assert good["type"] == "result" and good["seq"] == 8 and good["actions"].shape == (1, 7)


def test_error_replies_echo_the_sequence_number(server):
    with connect(f"ws://127.0.0.1:{server.port}", proxy=None) as ws:
        ws.recv(timeout=30)
        ws.send(with_obs(state=np.full(8, np.nan, np.float32)))
        assert unpackb(ws.recv(timeout=30))["seq"] == 7


def test_a_burst_of_bad_frames_between_good_requests(server):
    with connect(f"ws://127.0.0.1:{server.port}", proxy=None, max_size=2**22) as ws:
        ws.recv(timeout=30)
        for i in range(3):
            for frame, _ in BAD.values():
                ws.send(frame)
            ws.send(packb({"type": "infer", "seq": 1000 + i, "obs": good_obs()}))
            replies = [unpackb(ws.recv(timeout=30)) for _ in range(len(BAD) + 1)]
            assert [r["type"] for r in replies] == ["error"] * len(BAD) + ["result"]  # in order, none lost
            assert replies[-1]["seq"] == 1000 + i


def test_a_frame_over_the_transport_limit_closes_only_that_connection(server):
    with WebsocketClientPolicy("127.0.0.1", server.port) as bystander:
        with connect(f"ws://127.0.0.1:{server.port}", proxy=None, max_size=2**22) as ws:
            ws.recv(timeout=30)
            ws.send(b"\x00" * (300 * 1024))  # over transport_max_bytes (256 KiB): websockets closes 1009
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1009  # "message too big"
        assert bystander.infer(good_obs())["actions"].shape == (1, 7)
    with WebsocketClientPolicy("127.0.0.1", server.port) as newcomer:
        assert newcomer.infer(good_obs())["actions"].shape == (1, 7)


def test_a_client_that_disconnects_mid_request(server):
    dropped = server.stats.dropped_replies
    with connect(f"ws://127.0.0.1:{server.port}", proxy=None) as ws:
        ws.recv(timeout=30)
        ws.send(packb({"type": "infer", "seq": 1, "obs": good_obs()}))
        ws.socket.close()  # gone without a closing handshake, while the server computes its answer
    deadline = time.monotonic() + 20
    while server.stats.dropped_replies == dropped and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stats.dropped_replies == dropped + 1
    with WebsocketClientPolicy("127.0.0.1", server.port) as client:
        assert client.infer(good_obs())["actions"].shape == (1, 7)
