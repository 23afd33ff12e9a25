"""`vla-accel bench`: latency of every acceleration config of one policy, measured interleaved.

    vla-accel bench policy=openvla_default                       # random weights of that shape
    vla-accel bench policy=openvla_default policy.path=outputs/train/...  bench.keep_ratios=[0.5,0.25]
    vla-accel bench policy=cogact_default bench.head_cache_intervals=[2,5] bench.demos=demos.hdf5

What it does (speed is a ratio measured side by side in one process, on the same inputs):

1. Observations: consecutive frames of a few episodes -- the env's scripted expert driving
   `env.suite` tasks from init states 0, 1, ... (`bench.n_episodes` episodes), or the first frames of
   the demos of an HDF5 file (`bench.demos`). Consecutive, because VLA-Pruner / VLA-Cache carry state
   from frame to frame.
2. Policy: the checkpoint `policy.path`, or (path null) a randomly initialised model of the config's
   shape -- speed does not depend on the weights. One copy per config (same weights), each accelerated
   once, so temporal state (VLA-Pruner's action-attention history, VLA-Cache's K/V) stays per config.
3. Configs: the plain policy ("none"), each `bench.methods` preset x `bench.keep_ratios` (VLA-Cache has no
   keep ratio: once), each `bench.skip_layers` entry (a list of LLM layers skipped), each
   `bench.head_cache_intervals` entry (DiT head cache, CogACT-style policies only).
4. Per episode: every config's copy is reset; then rounds: in each round every config runs one
   inference call (`predict_action_chunk`) on that round's frame, in round-robin order rotated by one
   each round (so no config always runs first); the first `bench.warmup_rounds` rounds are not timed
   (>= 3 covers VLA-Pruner's w = 3 steps without pruning). Latency = the policy's own stage timer
   (`last_timing`: each stage and the call's "total", CUDA-synchronised on CUDA). "select" is the pruning
   method's own work (attention probes, action-attention capture, scoring, selection, history update);
   it is timed inside "prefill" / "decode", so those INCLUDE it (vla_accel.measure.timing).
5. Report per config: p50/p90 per stage and end to end, speedup = p50(total of "none") / p50(total)
   (and `paired_speedup`: the median over rounds of the same round's ratio, robust to load drift),
   the analytic FLOPs ratio (vla_accel.accel.call_accounting; accelerated / plain, whole call), ideal speedup =
   1 / FLOPs ratio, and achieved / ideal. Written as bench.json and bench.md in the Hydra output dir with
   the machine, the command and the date, and printed as a table.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from vla_accel.conf import validated
from vla_accel.measure.timing import STAGES, summarize
from vla_accel.policies.capabilities import require_dit_head
from vla_accel.tools.bench_config import BenchSchema

BASELINE = "none"
NO_KEEP_RATIO = ("vla_cache",)  # presets that do not prune to a budget


@dataclass
class BenchConfig:
    """One row of the bench: a name and the accel config (None = the plain policy)."""

    name: str
    method: str
    keep_ratio: float | None
    accel: object | None  # AccelConfig
    skip_layers: list[int] | None = None  # layer-skip rows: the LLM layers skipped
    samples: list[dict] = field(default_factory=list)  # per timed call: {"ms": {...}, "flops", "tokens_kept"}


# ------------------------------------------------------------------ observations


def _frames_from_env(cfg: DictConfig, n_frames: int) -> list[list[dict]]:
    from vla_accel import envs
    from vla_accel.harness.task_selection import env_kwargs, resolve_suites, resolve_tasks

    suite = resolve_suites(cfg.env.suite)[0]
    tasks = resolve_tasks(suite, cfg.env.task_ids)
    kwargs = env_kwargs(cfg.env)
    size = _policy_image_size(cfg)
    if size is not None:
        kwargs["image_size"] = size
    episodes = []
    for i in range(int(cfg.bench.n_episodes)):
        task = tasks[i % len(tasks)]
        env = envs.make_env(suite, task.task_id, **kwargs)
        try:
            expert = env.unwrapped.expert()
            expert.reset()
            obs, _ = env.reset(seed=int(cfg.bench.seed) + i, options={"init_state_id": i // len(tasks)})
            frames = [obs]
            while len(frames) < n_frames:
                obs, _, terminated, truncated, _ = env.step(expert.select_action(obs))
                frames.append(obs)
                if terminated or truncated:  # a short episode: keep its last frame for the rest
                    frames += [obs] * (n_frames - len(frames))
        finally:
            env.close()
        episodes.append(frames)
    return episodes


def _frames_from_demos(path: str, n_episodes: int, n_frames: int) -> list[list[dict]]:
    from vla_accel.data.hdf5_io import load_demos

    demos = load_demos(path)[:n_episodes]
    if not demos:
        raise ValueError(f"bench.demos {path} holds no demos")
    episodes = []
    for d in demos:
        if len(d) < n_frames:
            raise ValueError(f"{path}:{d.name} has {len(d)} frames; the bench needs warmup_rounds + rounds = "
                             f"{n_frames} consecutive frames (lower bench.rounds)")
        episodes.append([{"agentview_image": d.agentview_image[t], "wrist_image": d.wrist_image[t],
                          "state": d.state[t], "instruction": d.instruction} for t in range(n_frames)])
    return episodes


def _policy_image_size(cfg: DictConfig) -> int | None:
    model = cfg.policy.get("model")
    if cfg.policy.get("path") or model is None:
        return None
    return int(model.vision[0].image_size)


# ------------------------------------------------------------------ policy and configs


def build_policy(cfg: DictConfig, episodes: list[list[dict]]):
    """policy.path's checkpoint, or a random model of the config's shape (norm stats: unit range)."""
    import torch

    from vla_accel.policies import policy_spec

    kind = cfg.policy.type
    if kind not in ("openvla", "cogact"):
        policy_spec(cfg.policy)  # an unknown type: the registry's did-you-mean
        raise ValueError(f"bench needs a VLA policy (openvla or cogact), got policy.type={kind!r}")
    if cfg.policy.get("path"):
        from vla_accel.policies import make_policy

        return make_policy(cfg.policy, None).eval()
    from vla_accel.policies.common.action_tokenizer import compute_norm_stats
    from vla_accel.policies.common.factory import device_dtype, policy_class

    cls = policy_class(kind)
    config = cls.config_class.from_dict(OmegaConf.to_container(cfg.policy.model, resolve=True))
    config.input_image_size = None  # accept the frames at whatever size they come (resized)
    actions = np.random.default_rng(int(cfg.bench.seed)).uniform(-1, 1, (64, config.action_dim))
    config.norm_stats = {"bench": compute_norm_stats(actions)}
    torch.manual_seed(int(cfg.bench.seed))
    instructions = sorted({f["instruction"] for ep in episodes for f in ep})
    policy = cls.from_config(config, extra_texts=instructions)
    device, dtype = device_dtype(cfg.policy)
    return policy.to(device=device, dtype=dtype).eval()


def bench_configs(cfg: DictConfig, policy) -> list[BenchConfig]:
    from vla_accel.accel.config import load_accel_config

    b = cfg.bench
    layer = {} if b.get("prune_layer") is None else {"prune_layer": int(b.prune_layer)}  # null: the preset's K
    rows = [BenchConfig(BASELINE, BASELINE, None, None)]
    for method in b.methods:
        if method in NO_KEEP_RATIO:
            rows.append(BenchConfig(method, method, None, load_accel_config(method)))
            continue
        for r in b.keep_ratios:
            rows.append(BenchConfig(f"{method}@{r:g}", method, float(r),
                                    load_accel_config(method, keep_ratio=float(r), **layer)))
    for layers in b.get("skip_layers") or []:
        layers = [int(x) for x in layers]
        rows.append(BenchConfig(f"skip{layers}", "layer_skip", None, load_accel_config("none", skip_layers=layers),
                                skip_layers=layers))
    for n in b.get("head_cache_intervals") or []:
        require_dit_head(policy, "bench.head_cache_intervals", fix="drop bench.head_cache_intervals")
        rows.append(BenchConfig(f"head_cache/{int(n)}", "head_cache", None,
                                load_accel_config("none", head_cache_interval=int(n))))
    return rows


# ------------------------------------------------------------------ measuring


def _timed_inference(policy, obs: dict) -> dict:
    from vla_accel.accel.call_accounting import call_accounting

    policy.predict_action_chunk(obs)
    ms = dict(policy.last_timing)  # the stage timer's record; "total" is the call's (synchronised) time
    acc = call_accounting(policy)
    return {"ms": ms, "flops": acc.get("flops"), "tokens_kept": acc.get("tokens_kept"),
            "tokens_of": acc.get("tokens_of")}


def measure(rows: list[BenchConfig], policies: list, episodes: list[list[dict]], warmup_rounds: int,
            progress=None) -> None:
    """Interleaved rounds (see the module docstring); fills each row's `samples`."""
    n = len(rows)
    timed_round = 0
    for frames in episodes:
        for p in policies:
            p.reset()
        for r, obs in enumerate(frames):
            for j in range(n):
                k = (j + r) % n  # rotate the order by one each round
                sample = _timed_inference(policies[k], obs)
                if r >= warmup_rounds:
                    sample["round"] = timed_round
                    rows[k].samples.append(sample)
            timed_round += r >= warmup_rounds
            if progress is not None:
                progress()


def summarise(rows: list[BenchConfig]) -> list[dict]:
    base = rows[0]
    base_p50 = summarize(s["ms"]["total"] for s in base.samples)["p50"]
    base_flops = _mean_flops(base)
    out = []
    for row in rows:
        stages = {}
        for stage in STAGES:
            s = summarize(x["ms"][stage] for x in row.samples if stage in x["ms"])
            if s is not None:
                stages[stage] = {"p50": s["p50"], "p90": s["p90"], "mean": s["mean"]}
        flops = _mean_flops(row)
        ratio = flops["total"] / base_flops["total"] if flops and base_flops else None
        speedup = base_p50 / stages["total"]["p50"]
        # paired: the ratio within each round (same frame, seconds apart), then its median -- robust to
        # load that changes between rounds
        base_by_round = {x["round"]: x["ms"]["total"] for x in base.samples}
        paired = float(np.median([base_by_round[x["round"]] / x["ms"]["total"] for x in row.samples]))
        ideal = 1.0 / ratio if ratio else None
        kept = [x["tokens_kept"] for x in row.samples if x.get("tokens_kept") is not None]
        prefill_ratio = flops["prefill"] / base_flops["prefill"] if flops and base_flops else None
        out.append({
            "name": row.name, "method": row.method, "keep_ratio": row.keep_ratio, "skip_layers": row.skip_layers,
            "n_calls": len(row.samples),
            "latency_ms": stages, "speedup": speedup, "paired_speedup": paired, "flops_per_call": flops, "flops_ratio": ratio,
            "prefill_flops_ratio": prefill_ratio,
            "ideal_speedup": ideal, "achieved_over_ideal": speedup / ideal if ideal else None,
            # the prefill stage alone (selection included): its speedup over its FLOPs ideal 1 / prefill ratio
            "prefill_achieved_over_ideal": (_prefill_p50(base) / stages["prefill"]["p50"] * prefill_ratio
                                            if prefill_ratio and "prefill" in stages else None),  # fmt: skip
            "tokens_kept": {"mean": float(np.mean(kept)), "of": row.samples[0].get("tokens_of")} if kept else None,
        })
    return out


def _prefill_p50(row: BenchConfig) -> float:
    return summarize(x["ms"]["prefill"] for x in row.samples if "prefill" in x["ms"])["p50"]


def _mean_flops(row: BenchConfig) -> dict | None:
    flops = [s["flops"] for s in row.samples if s.get("flops")]
    if not flops:
        return None
    return {k: float(np.mean([f[k] for f in flops])) for k in flops[0]}


# ------------------------------------------------------------------ reporting


def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _head_stage(results: list[dict]) -> str:
    return "action_head" if any("action_head" in r["latency_ms"] for r in results) else "decode"


SELECT_LEGEND = ("select = the pruning method's own time (probes, action capture, scoring, selection); "
                 "it is part of prefill and decode, not added to them")


def bench_table(results: list[dict], title: str = "bench") -> Table:
    head = _head_stage(results)
    table = Table(title=title, caption="p50 ms per stage; " + SELECT_LEGEND)
    for col, just in (("config", "left"), ("tokens", "right"), ("vision", "right"), ("prefill", "right"),
                      ("select", "right"), (head, "right"), ("total p50", "right"), ("total p90", "right"),
                      ("speedup", "right"), ("paired", "right"),
                      ("FLOPs ratio", "right"), ("ideal", "right"), ("achieved/ideal", "right"),
                      ("prefill a/i", "right")):
        table.add_column(col + (" ms" if col in ("vision", "prefill", "select", head) else ""), justify=just,
                         min_width=max(len(r["name"]) for r in results) if col == "config" else None)
    for r in results:
        table.add_row(*_cells(r, head))
    return table


def _cells(r: dict, head: str) -> list[str]:
    lat = r["latency_ms"]
    tk = r["tokens_kept"]
    return [r["name"], f"{tk['mean']:.0f}/{tk['of']}" if tk else "-",
            _f(lat.get("vision", {}).get("p50")), _f(lat.get("prefill", {}).get("p50")),
            _f(lat.get("select", {}).get("p50")), _f(lat.get(head, {}).get("p50")), _f(lat["total"]["p50"]), _f(lat["total"]["p90"]),
            _f(r["speedup"], "{:.2f}x"), _f(r["paired_speedup"], "{:.2f}x"), _f(r["flops_ratio"], "{:.3f}"), _f(r["ideal_speedup"], "{:.2f}x"),
            _f(r["achieved_over_ideal"], "{:.2f}"), _f(r.get("prefill_achieved_over_ideal"), "{:.2f}")]


def bench_markdown(report: dict) -> str:
    results = report["results"]
    head = _head_stage(results)
    m = report["machine"]
    lines = [f"# vla-accel bench: {report['policy']}", "",
             f"- command: `{report['command']}`", f"- date: {report['date']}",
             f"- machine: {m['cpu']} ({m['cpu_count']} cores), {m['platform']}, device {m['device']}"
             + (f" ({m['gpu']})" if m.get("gpu") else "") + f", torch {m['torch']} with {m['torch_threads']} threads",
             (f"- {report['n_calls_per_config']} timed inference calls per config ({report['n_episodes']} episodes x "
              f"{report['rounds']} rounds, after {report['warmup_rounds']} untimed rounds each), interleaved round-robin"),
             ("- latency: p50 ms of the policy's stage timer per stage; speedup = p50(total of none) / p50(total); "
              "FLOPs ratio analytic (vla_accel.accel.call_accounting), ideal = 1 / FLOPs ratio"),
             "- paired = median over rounds of total(none) / total(config) in the same round",
             ("- prefill a/i = the prefill stage's speedup (selection included) / its FLOPs ideal "
              "(1 / the prefill's FLOPs ratio)"),
             "- " + SELECT_LEGEND, "",
             "| config | tokens kept | vision | prefill | select | " + head + " | total p50 | total p90 | speedup | "
             "paired | FLOPs ratio | ideal | achieved/ideal | prefill a/i |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(_cells(r, head)) + " |" for r in results]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ entry points


def bench(cfg: DictConfig, output_dir: str | Path, console: Console | None = None) -> dict:
    """Run the bench `cfg` (the composed `bench` app config) describes; write bench.json / bench.md."""
    import torch

    from vla_accel.accel.accelerate import accelerate

    console = console or Console()
    b = cfg.bench
    validated(BenchSchema, b)  # the ranges (and the types, for a section built without the schema)
    if b.get("threads") is not None:
        torch.set_num_threads(int(b.threads))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    n_frames = int(b.warmup_rounds) + int(b.rounds)
    if b.get("demos"):
        episodes = _frames_from_demos(str(b.demos), int(b.n_episodes), n_frames)
    else:
        episodes = _frames_from_env(cfg, n_frames)
    base = build_policy(cfg, episodes)
    rows = bench_configs(cfg, base)
    policies = []
    for row in rows:  # one copy per config, same weights; accelerate() validates the config now
        p = copy.deepcopy(base)
        policies.append(p if row.accel is None else accelerate(p, row.accel))
    n_rounds = len(episodes) * n_frames
    console.print(f"bench: {len(rows)} configs x {n_rounds} rounds ({len(episodes)} episodes, "
                  f"{b.warmup_rounds} warm-up rounds each), torch threads {torch.get_num_threads()}")
    from tqdm import tqdm

    with tqdm(total=n_rounds, desc="bench", unit="round", disable=not b.get("progress", True)) as bar, \
            torch.no_grad():
        measure(rows, policies, episodes, int(b.warmup_rounds), progress=lambda: bar.update(1))
    results = summarise(rows)
    report = {
        "policy": cfg.policy.get("path") or f"{cfg.policy.type} (random init, {_policy_name(cfg)})",
        "command": "vla-accel bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(str(base.device)),
        "n_episodes": len(episodes), "rounds": int(b.rounds), "warmup_rounds": int(b.warmup_rounds),
        "n_calls_per_config": len(rows[0].samples),
        "frames": "demos " + str(b.demos) if b.get("demos") else f"env {cfg.env.suite} (scripted expert)",
        "results": results,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    (output_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "bench.md").write_text(bench_markdown(report))
    table = bench_table(results, title=f"bench: {report['policy']} on {report['machine']['device']}")
    # not a terminal (a log file): do not squeeze 11 columns into 80 characters
    (console if console.is_terminal else Console(width=max(console.width, 170))).print(table)
    console.print(f"results: {output_dir / 'bench.json'}, {output_dir / 'bench.md'}")
    return report


def _policy_name(cfg: DictConfig) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("policy", "policy config")
    except ValueError:  # not running under Hydra (tests)
        return "policy config"


def run(cfg: DictConfig) -> None:
    """The Hydra task function of `vla-accel bench` (outputs go to Hydra's output dir)."""
    from hydra.core.hydra_config import HydraConfig

    bench(cfg, Path(HydraConfig.get().runtime.output_dir))
