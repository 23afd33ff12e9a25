"""Fault injection against `vla-accel serve` on loopback: the server must keep serving.

    python scripts/fault_server.py --preset openvla_tiny --accel vla_pruner

Three scenarios, each checked (exit code 1 if any check fails), figures printed as JSON (--out):
1. client killed mid-episode: a client PROCESS runs an episode and is SIGKILLed while its request is in
   flight; a second client connected all along keeps its episode (its answers equal a fresh reference
   client's on the same observations), /healthz answers, a newcomer is served.
2. server restarted between steps: a client runs half an episode, the server process is SIGKILLed (or
   SIGTERMed with --graceful) and started again on the same port; the client's next call, made while
   the server is down, keeps trying, reconnects, resets (the episode restarts: its answers equal a
   fresh episode's) and goes on.
3. burst of malformed messages between good requests: --bursts rounds of --burst-size bad frames (bad
   msgpack, wrong types, NaN state, wrong image shape/dtype, empty/huge instruction, oversized payload)
   then one good request; every bad frame gets an error reply, every good one a result, in order.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve_fixtures import synthetic_obs, write_random_checkpoint  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from vla_accel.runtime.client import WebsocketClientPolicy, packb, unpackb  # noqa: E402
from vla_accel.runtime.serving.server_process import ServerProcess  # noqa: E402


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        return r.status


def episode_obs(n: int, size: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [synthetic_obs(rng, size) for _ in range(n)]


def answers(client: WebsocketClientPolicy, observations: list[dict]) -> list[tuple]:
    """Per step: (actions, the visual tokens the pruner kept or None) -- the kept tokens depend on the
    episode's history (VLA-Pruner's temporal score), so they show whether an episode was disturbed."""
    out = []
    for o in observations:
        reply = client.infer(o)
        kept = (reply.get("accel_stats") or {}).get("kept_visual")
        out.append((reply["actions"], None if kept is None else kept.tolist()))
    return out


def same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(np.allclose(x[0], y[0], rtol=1e-5, atol=1e-6) and x[1] == y[1]
                                    for x, y in zip(a, b))


KILLED_CLIENT = textwrap.dedent("""
    import sys, numpy as np
    from websockets.sync.client import connect
    from vla_accel.runtime.client import packb
    port, size = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(7)
    with connect(f"ws://127.0.0.1:{port}", proxy=None) as ws:
        ws.recv()  # metadata
        for i in range(6):
            obs = {"agentview_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                   "instruction": "open the drawer"}
            ws.send(packb({"type": "infer", "seq": i, "obs": obs}))
            if i == 5:
                print("in flight", flush=True)  # the parent kills us now, this request unanswered
                sys.stdin.read()  # wait for the kill
            ws.recv()
""")


def scenario_client_killed(server: ServerProcess, size: int) -> dict:
    seq = episode_obs(8, size, seed=1)
    reference = answers(WebsocketClientPolicy("127.0.0.1", server.port), seq)  # a whole episode, alone
    bystander = WebsocketClientPolicy("127.0.0.1", server.port)
    got = answers(bystander, seq[:4])
    child = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(server.port), str(size)],
                             stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    child.kill()  # SIGKILL mid-episode, request in flight
    child.wait()
    got += answers(bystander, seq[4:])  # the bystander's episode goes on where it was
    status = healthz(server.port)
    newcomer_ok = WebsocketClientPolicy("127.0.0.1", server.port).infer(seq[0])["actions"].shape[-1] == 7
    checks = {"killed_client_was_mid_request": line.strip() == "in flight", "healthz_200": status == 200,
              "bystander_episode_intact": same(got, reference), "newcomer_served": newcomer_ok,
              "episode_used_pruning_history": any(k is not None for _, k in reference),
              "bystander_never_reconnected": bystander.reconnects == 0}
    bystander.close()
    return {"checks": checks}


def scenario_server_restart(server: ServerProcess, size: int, graceful: bool) -> dict:
    seq = episode_obs(6, size, seed=2)
    client = WebsocketClientPolicy("127.0.0.1", server.port, reconnect_timeout_s=180)
    first = answers(client, seq[:3])
    port = server.port
    server.stop() if graceful else server.kill()
    down_at = time.monotonic()
    # the client's next step starts while the server is down: it keeps trying, reconnects, resets, retries
    result: dict = {}
    step = threading.Thread(target=lambda: result.update(after=answers(client, seq[3:4]), t=time.monotonic()))
    step.start()
    server.start(port)  # same port
    restart_s = time.monotonic() - down_at
    step.join(180)
    after = result["after"]
    first_call_s = result["t"] - down_at
    fresh = WebsocketClientPolicy("127.0.0.1", port)
    expected_after = answers(fresh, seq[3:4])  # a fresh episode's first answer to the same frame
    rest = answers(client, seq[4:])
    expected_rest = answers(fresh, seq[4:])
    checks = {"same_port": server.port == port, "client_reconnected_once": client.reconnects == 1,
              "episode_restarted_after_reconnect": same(after + rest, expected_after + expected_rest),
              "first_half_served": len(first) == 3}
    client.close()
    fresh.close()
    return {"checks": checks, "kill": "SIGTERM" if graceful else "SIGKILL", "server_restart_s": restart_s,
            "client_step_spanning_the_restart_s": first_call_s}


def bad_frames(size: int, max_bytes: int) -> list:
    good = synthetic_obs(np.random.default_rng(3), size)
    nan_state = {**good, "state": np.full(8, np.nan, np.float32)}
    return [b"\xc1\xff garbage", "a text frame", packb([1, 2]), packb({"type": "teleport"}),
            packb({"type": "infer"}), packb({"type": "infer", "obs": nan_state}),
            packb({"type": "infer", "obs": {**good, "agentview_image": np.zeros((size, size + 1, 3), np.uint8)}}),
            packb({"type": "infer", "obs": {**good, "agentview_image": np.zeros((size, size, 3), np.float64)}}),
            packb({"type": "infer", "obs": {**good, "instruction": ""}}),
            packb({"type": "infer", "obs": {**good, "instruction": "go " * 10_000}}),
            packb({"type": "infer", "obs": {**good, "pad": np.zeros(max_bytes + 10, np.uint8)}})]


def scenario_malformed_burst(server: ServerProcess, size: int, bursts: int, burst_size: int) -> dict:
    max_bytes = WebsocketClientPolicy("127.0.0.1", server.port).get_server_metadata()["max_message_bytes"]
    frames = bad_frames(size, max_bytes)
    good = synthetic_obs(np.random.default_rng(4), size)
    n_bad = n_err = n_good = n_result = out_of_order = 0
    t0 = time.monotonic()
    with connect(f"ws://127.0.0.1:{server.port}", max_size=2**26, proxy=None) as ws:
        unpackb(ws.recv(timeout=30))  # metadata
        for b in range(bursts):
            for i in range(burst_size):
                ws.send(frames[(b * burst_size + i) % len(frames)])
            ws.send(packb({"type": "infer", "seq": b, "obs": good}))
            replies = [unpackb(ws.recv(timeout=60)) for _ in range(burst_size + 1)]
            n_bad += burst_size
            n_err += sum(r["type"] == "error" for r in replies[:-1])
            n_good += 1
            n_result += replies[-1]["type"] == "result"
            out_of_order += replies[-1].get("seq") != b
    checks = {"every_bad_frame_got_an_error": n_err == n_bad, "every_good_request_served": n_result == n_good,
              "in_order": out_of_order == 0, "healthz_200": healthz(server.port) == 200}
    return {"checks": checks, "bad_frames": n_bad, "good_requests": n_good, "wall_s": time.monotonic() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="openvla_tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--accel", default="vla_pruner")
    ap.add_argument("--keep-ratio", type=float, default=0.5)
    ap.add_argument("--prune-layer", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--bursts", type=int, default=20)
    ap.add_argument("--burst-size", type=int, default=50)
    ap.add_argument("--graceful", action="store_true", help="restart with SIGTERM instead of SIGKILL")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    report = {"command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="vla_fault_") as tmp:
        ckpt = args.checkpoint or write_random_checkpoint(args.preset, Path(tmp) / "ckpt", args.image_size)
        overrides = [f"policy={args.preset}", f"policy.path={ckpt}", f"accel={args.accel}", "serve.torch_threads=1",
                     "serve.max_message_bytes=262144"]
        if args.accel != "none":
            overrides += [f"accel.keep_ratio={args.keep_ratio}", f"accel.prune_layer={args.prune_layer}"]
        report["serve_overrides"] = overrides
        server = ServerProcess(overrides, Path(tmp) / "run")
        server.start()
        try:
            report["client_killed_mid_episode"] = scenario_client_killed(server, args.image_size)
            report["server_restart"] = scenario_server_restart(server, args.image_size, args.graceful)
            report["malformed_burst"] = scenario_malformed_burst(server, args.image_size, args.bursts, args.burst_size)
        finally:
            report["server_exit_code"] = server.stop()
    checks = {f"{name}.{k}": v for name, part in report.items() if isinstance(part, dict) and "checks" in part
              for k, v in part["checks"].items()}
    report["all_checks_passed"] = all(checks.values())
    print(json.dumps(report, indent=1, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return 0 if report["all_checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
