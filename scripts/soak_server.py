"""Soak test of `vla-accel serve`: many control steps through a real server process on loopback.

    python scripts/soak_server.py --steps 10000 --preset cogact_tiny --accel vla_pruner --keep-ratio 0.5
    python scripts/soak_server.py --steps 100000 --clients 4     # 4 concurrent clients, 25,000 steps each

Starts `vla-accel serve` (a random-weight checkpoint of --preset unless --checkpoint is given) on
127.0.0.1, then drives --steps control steps through `vla_accel.runtime.client.WebsocketClientPolicy`, one
request per step (--mode select_action: the server's per-connection action queue, a model call every
n_action_steps; --mode infer: a model call every step), with a reset every --episode-steps. Every
request carries a sequence number; a reply with another number counts as reordered, a request with no
reply within --request-timeout as lost. Reports (and writes --out as JSON): server RSS at start (after
warm-up and one episode) and end, round-trip latency percentiles per window of --window steps,
errors. With --clients N, N clients (threads, each its own connection and episode) share --steps;
the counts are summed, the RSS is the server's at the first client's first episode end and at the end.
Bounded by --steps and --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve_fixtures import synthetic_obs, write_random_checkpoint  # noqa: E402

from vla_accel.runtime.client import ServerError, WebsocketClientPolicy  # noqa: E402
from vla_accel.runtime.serving.server_process import ServerProcess  # noqa: E402


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())} if a.size else {"n": 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--preset", default="cogact_tiny", help="conf/policy preset (architecture + type)")
    ap.add_argument("--checkpoint", default=None, help="serve this checkpoint instead of a random one")
    ap.add_argument("--accel", default="vla_pruner")
    ap.add_argument("--keep-ratio", type=float, default=0.5)
    ap.add_argument("--prune-layer", type=int, default=1, help="accel.prune_layer (the tiny presets have 2 layers)")
    ap.add_argument("--extra", nargs="*", default=[], help="more `vla-accel serve` overrides")
    ap.add_argument("--mode", choices=("select_action", "infer"), default="select_action")
    ap.add_argument("--episode-steps", type=int, default=200)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--max-seconds", type=float, default=1800)
    ap.add_argument("--request-timeout", type=float, default=60)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.window < 1 or args.episode_steps < 1:
        ap.error("--steps, --window and --episode-steps must be >= 1")

    with tempfile.TemporaryDirectory(prefix="vla_soak_") as tmp:
        ckpt = args.checkpoint or write_random_checkpoint(args.preset, Path(tmp) / "ckpt", args.image_size)
        overrides = [f"policy={args.preset}", f"policy.path={ckpt}", f"accel={args.accel}",
                     f"serve.torch_threads={args.torch_threads}", *args.extra]
        if args.accel != "none":
            overrides += [f"accel.keep_ratio={args.keep_ratio}", f"accel.prune_layer={args.prune_layer}"]
        server = ServerProcess(overrides, Path(tmp) / "run")
        server.start()
        report = {"command": " ".join(sys.argv), "clients": args.clients, "serve_overrides": overrides, "preset": args.preset, "random_weights": args.checkpoint is None,
                  "accel": args.accel, "keep_ratio": args.keep_ratio, "mode": args.mode,
                  "episode_steps": args.episode_steps, "server_pid": server.pid}
        try:
            report.update(soak(server, args) if args.clients == 1 else soak_concurrent(server, args))
        finally:
            report["server_exit_code"] = server.stop()
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    ok = report["lost"] == 0 and report["reordered"] == 0 and report["errors"] == 0
    return 0 if ok else 1


def soak(server: ServerProcess, args) -> dict:
    rng = np.random.default_rng(0)
    client = WebsocketClientPolicy("127.0.0.1", server.port, request_timeout_s=args.request_timeout)
    meta = client.get_server_metadata()
    size = meta["image_size"] or args.image_size
    frames = [synthetic_obs(rng, size) for _ in range(64)]  # a pool, so the client's own cost stays small
    windows, window_ms, model_ms, rss = [], [], [], []
    lost = reordered = errors = 0
    model_calls = pruned_calls = 0
    kept_tokens, prompt_tokens = [], None
    t_start = time.monotonic()
    rss_start = None
    steps_done = 0
    for step in range(args.steps):
        if time.monotonic() - t_start > args.max_seconds:
            break
        if step % args.episode_steps == 0:
            client.reset()
        obs = frames[step % len(frames)]
        t0 = time.perf_counter()
        try:
            if args.mode == "infer":
                out = client.infer(obs)
                assert out["actions"].shape[1] == meta["action_dim"]
            else:
                out = client._request({"type": "select_action", "obs": obs})  # keep the timing fields
                assert out["action"].shape == (meta["action_dim"],)
        except ServerError as e:
            reordered += "out of order" in str(e)
            errors += "out of order" not in str(e)
            continue
        except TimeoutError:  # RequestTimeout: no reply in time (the client stays usable)
            lost += 1
            continue
        rt = (time.perf_counter() - t0) * 1e3
        window_ms.append(rt)
        if args.mode == "infer" or out["ran_model"]:  # this step ran the model
            model_ms.append(rt)
            stats = out.get("accel_stats")
            if stats is not None:
                model_calls += 1
                pruned_calls += stats["pruned"]
                kept_tokens.append(stats["tokens_kept"])
                prompt_tokens = stats["tokens"]
        steps_done += 1
        if step + 1 == args.episode_steps:
            rss_start = server.rss_mb()  # after warm-up and one whole episode: allocator pools settled
        if (step + 1) % args.window == 0:
            rss.append(server.rss_mb())
            windows.append({"steps": f"{step + 1 - args.window}-{step}", "round_trip_ms": percentiles(window_ms),
                            "model_step_round_trip_ms": percentiles(model_ms), "server_rss_mb": rss[-1]})
            print(f"step {step + 1}: p50 {windows[-1]['round_trip_ms']['p50']:.2f} ms, "
                  f"p99 {windows[-1]['round_trip_ms']['p99']:.2f} ms, rss {rss[-1]:.1f} MiB", file=sys.stderr)
            window_ms, model_ms = [], []
    wall = time.monotonic() - t_start
    rss_end = server.rss_mb()
    client.close()
    return {"steps_requested": args.steps, "steps_done": steps_done, "wall_s": wall,
            "steps_per_s": steps_done / wall, "lost": lost, "reordered": reordered, "errors": errors,
            "reconnects": client.reconnects,
            "model_calls": model_calls, "pruned_calls": pruned_calls,
            "tokens_kept_mean": float(np.mean(kept_tokens)) if kept_tokens else None, "prompt_tokens": prompt_tokens,
            "server_rss_mb": {"start": rss_start, "end": rss_end,
                                                               "growth": None if rss_start is None else rss_end - rss_start},
            "windows": windows}


def soak_concurrent(server: ServerProcess, args) -> dict:
    """--clients soaks at once, --steps shared; summed counts, the server's RSS growth over the whole run."""
    import copy
    import threading

    parts: list[dict] = [None] * args.clients
    mine = copy.copy(args)
    mine.steps = args.steps // args.clients

    def run(i: int) -> None:
        parts[i] = soak(server, mine)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    rss_end = server.rss_mb()
    rss_start = parts[0]["server_rss_mb"]["start"]
    out = {k: sum(p[k] for p in parts) for k in ("steps_done", "lost", "reordered", "errors", "reconnects",
                                                  "model_calls", "pruned_calls")}
    out.update(steps_requested=args.steps, wall_s=wall, steps_per_s=out["steps_done"] / wall,
               server_rss_mb={"start": rss_start, "end": rss_end, "growth": rss_end - rss_start,
                              "growth_pct": 100 * (rss_end - rss_start) / rss_start},
               per_client_windows=[p["windows"] for p in parts])
    return out


if __name__ == "__main__":
    sys.exit(main())
