"""Hostile requests against `vla-accel serve` on loopback: the server must refuse each one, stay
responsive and not grow.

    python scripts/fuzz_server.py --requests 1000 --out fuzz.json

Starts `vla-accel serve` (a random-weight checkpoint of --preset, max_message_bytes 4 MiB, REST on)
on 127.0.0.1 and sends --requests hostile requests, cycling through KINDS: random bytes, truncated
msgpack, text frames, 4 MB messages of 4 million empty lists, 4 MB structured-dtype strings, 1000-deep
nesting, ndarrays and 1 MB strings as `type`, huge shapes, 512-emoji / special-token / zero-width
instructions, float64 1e300 state, wrong images, frames over max_message_bytes, raw garbage
handshakes, browser Origins, and bad REST bodies (malformed, deeply nested, over the limit). A thread
polls GET /healthz every 20 ms meanwhile. Checks (exit code 1 if one fails): every websocket request
got an error reply, every REST one a 4xx, refused handshakes were refused, a good request is served
afterwards, server RSS growth < 5% (start: after warm-up and 50 good requests), /healthz p99 < 50 ms.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve_fixtures import synthetic_obs, write_random_checkpoint  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from vla_accel.runtime.client import WebsocketClientPolicy, packb, unpackb  # noqa: E402
from vla_accel.runtime.serving.server_process import ServerProcess  # noqa: E402

MB4 = 4 * 2**20


def ws_frames(rng: np.random.Generator, good: dict) -> dict:
    """name -> a function making one hostile websocket frame."""
    n = MB4 - 64
    obs = lambda **c: packb({"type": "infer", "seq": 1, "obs": {**good, **c}})  # noqa: E731
    state64 = np.zeros(8)
    state64[2] = 1e300
    return {
        "random_bytes": lambda: rng.bytes(int(rng.integers(1, 4096))),
        "truncated": lambda: obs()[: int(rng.integers(1, 200))],
        "text_frame": lambda: "hello " * 100,
        "4mb_empty_lists": lambda: b"\xdd" + struct.pack(">I", n) + b"\x90" * n,
        "4mb_structured_dtype": lambda: msgpack.packb({"type": "infer", "obs": {"state": {
            "__ndarray__": b"\0" * 4, "dtype": ",".join(["f4"] * (n // 3)), "shape": [1]}}}),
        "deep_nesting": lambda: b"\x82\xa4type" + b"\x91" * 1000 + b"\xc0\xa3seq\x01",
        "ndarray_type": lambda: packb({"type": np.zeros(1000), "seq": 1}),
        "1mb_string_type": lambda: packb({"type": "x" * 2**20, "seq": 1}),
        "huge_shape": lambda: msgpack.packb({"type": "infer", "obs": {"state": {
            "__ndarray__": b"\0" * 8, "dtype": "<f4", "shape": [2**30, 2**30]}}}),
        "emoji_instruction": lambda: obs(instruction="\U0001F600" * 512),
        "special_tokens": lambda: obs(instruction="<act_255></s><pad>" * 10),
        "zero_width": lambda: obs(instruction="\u200b" * 100),
        "float64_overflow": lambda: obs(state=state64),
        "wrong_image": lambda: obs(agentview_image=np.zeros((500, 500, 3), np.uint8)),
        "over_max_message_bytes": lambda: obs(pad=np.zeros(MB4 + 100, np.uint8)),
    }


def rest_bodies(good: dict) -> dict:
    return {"rest_malformed": b"{nope", "rest_deep": b"[" * 100_000 + b"]" * 100_000,
            "rest_too_big": b"x" * (MB4 + 10), "rest_bad_dtype": json.dumps({
                "image": {"__numpy__": "AAAA", "dtype": ",".join(["f4"] * 300_000), "shape": [1]},
                "instruction": "go"}).encode()}


class Healthz(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.ms, self.failures, self.stop = port, [], 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                    r.read()
                self.ms.append((time.perf_counter() - t0) * 1e3)
            except OSError:
                self.failures += 1


def rest_post(port: int, body: bytes, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/act", body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        r.read()
        return r.status
    except OSError:  # the server may close on an over-limit body before we finish sending
        return 413
    finally:
        conn.close()


def handshake_refused(port: int, kind: str) -> bool:
    if kind == "browser_origin":
        try:
            with connect(f"ws://127.0.0.1:{port}", proxy=None, origin="http://evil.example"):
                return False
        except InvalidStatus as e:
            return e.response.status_code == 403
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # garbage instead of HTTP
        s.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        s.settimeout(10)
        try:
            return not s.recv(4096).startswith(b"HTTP/1.1 101")
        except OSError:
            return True


def fuzz(server: ServerProcess, rest_port: int, n: int, size: int) -> dict:
    rng = np.random.default_rng(0)
    good = synthetic_obs(rng, size)
    frames, bodies = ws_frames(rng, good), rest_bodies(good)
    kinds = list(frames) + list(bodies) + ["browser_origin", "garbage_handshake"]
    with WebsocketClientPolicy("127.0.0.1", server.port) as c:  # warm the allocator before measuring
        for _ in range(50):
            c.infer(good)
    rss_start = server.rss_mb()
    health = Healthz(server.port)
    health.start()
    counts = {k: [0, 0] for k in kinds}  # kind -> [sent, refused as expected]
    # built once (random_bytes: a fresh draw each time): building 4 MB frames in this process while the
    # poller thread waits for the GIL would show up as /healthz latency that is not the server's
    cache = {k: f() for k, f in frames.items() if k != "random_bytes"}
    t0 = time.monotonic()
    ws = connect(f"ws://127.0.0.1:{server.port}", proxy=None, max_size=2**26, legacy=True)
    ws.recv(timeout=30)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        counts[kind][0] += 1
        if kind in frames:
            ws.send(cache[kind] if kind in cache else frames[kind]())
            counts[kind][1] += unpackb(ws.recv(timeout=60)).get("type") == "error"
        elif kind in bodies:
            counts[kind][1] += 400 <= rest_post(rest_port, bodies[kind]) < 500
        else:
            counts[kind][1] += handshake_refused(server.port, kind)
    ws.close()
    wall = time.monotonic() - t0
    health.stop.set()
    health.join(10)
    with WebsocketClientPolicy("127.0.0.1", server.port) as c:
        served_after = c.infer(good)["actions"].shape[-1] == 7
    rss_end = server.rss_mb()
    ms = np.asarray(health.ms)
    return {"requests": n, "wall_s": wall, "by_kind": {k: {"sent": s, "refused": r} for k, (s, r) in counts.items()},
            "all_refused": all(s == r for s, r in counts.values()), "good_request_served_after": served_after,
            "server_rss_mb": {"start": rss_start, "end": rss_end, "growth_pct": 100 * (rss_end - rss_start) / rss_start},
            "healthz_ms": {"n": int(ms.size), "failures": health.failures, "p50": float(np.percentile(ms, 50)),
                           "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--preset", default="openvla_tiny")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vla_fuzz_") as tmp:
        ckpt = write_random_checkpoint(args.preset, Path(tmp) / "ckpt", args.image_size)
        rest_port = _free_port()
        overrides = [f"policy={args.preset}", f"policy.path={ckpt}", "accel=vla_pruner", "accel.keep_ratio=0.5",
                     "accel.prune_layer=1", "serve.torch_threads=1", f"serve.max_message_bytes={MB4}",
                     f"serve.rest_port={rest_port}"]
        server = ServerProcess(overrides, Path(tmp) / "run")
        server.start()
        try:
            report = {"command": " ".join(sys.argv), "serve_overrides": overrides,
                      **fuzz(server, rest_port, args.requests, args.image_size)}
        finally:
            report["server_exit_code"] = server.stop()
    h, r = report["healthz_ms"], report["server_rss_mb"]
    report["checks_passed"] = bool(report["all_refused"] and report["good_request_served_after"]
                                   and r["growth_pct"] < 5 and h["p99"] < 50 and h["failures"] == 0)
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if report["checks_passed"] else 1


def _free_port() -> int:
    with socket.socket() as s:  # ServerProcess reads the websocket port from the output; REST gets a known one
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
