"""The `timing` block of eval_info.json (docs/interfaces.md, "Timing") and its terminal table.

Built from the per-episode records of eval_episodes.jsonl (each holds its inference calls), so a
resumed run summarises every episode. Warm-up calls (`eval.warmup_calls`, made before the first episode
by `vla_accel.harness.rollout.warm_up`) are in no episode; `warmup_calls` says how many this process made.

Keys beyond the interface's: `n_episodes`, `stale_steps` / `stale_step_rate` and `hold_steps` (steps
executed on an action not delivered at that step, and before the first action; real-time mode),
`modelled_latency_ms` (the latency the real-time clock charged, when the latency model is not
`measured`), `deadline_period_ms`.
"""

from __future__ import annotations

from rich.table import Table

from vla_accel.measure.timing import (
    NESTED_STAGES,
    STAGES,
    control_period_ms,
    count_deadline_misses,
    stage_summaries,
    summarize,
)


def keep_ratio_summary(calls: list[dict]) -> dict | None:
    """The visual tokens each call kept over those it had (an adaptive budget changes it per step; each
    call's own figure stays in the episode log): mean, min, max, and the share of calls that pruned."""
    ratios = [c["tokens_kept"] / c["tokens_of"] for c in calls
              if c.get("tokens_kept") is not None and c.get("tokens_of")]  # fmt: skip
    if not ratios:
        return None
    return {"mean": sum(ratios) / len(ratios), "min": min(ratios), "max": max(ratios),
            "pruned_share": sum(r < 1.0 for r in ratios) / len(ratios)}


def timing_block(episodes: list[dict], *, control_hz: float, latency_model: str,
                 latency_param: float | None, realtime: bool, warmup_calls: int = 0) -> dict:
    """episodes: per-episode records holding "calls" (see vla_accel.harness.rollout.timed_call), "n_steps",
    "loop_s", "n_stale_steps", "n_hold_steps"."""
    timed = [c for e in episodes for c in e.get("calls", [])]
    n_steps = sum(int(e["n_steps"]) for e in episodes)
    loop_s = sum(float(e.get("loop_s", 0.0)) for e in episodes)
    latency = stage_summaries([c["ms"] for c in timed])
    modelled = [c["latency_ms"] for c in timed]
    misses = count_deadline_misses(modelled, control_hz)
    kept = [c["tokens_kept"] for c in timed if c.get("tokens_kept") is not None]
    of = {c["tokens_of"] for c in timed if c.get("tokens_of") is not None}
    flops = [c["flops"] for c in timed if c.get("flops")]
    mean_total = latency.get("total", {}).get("mean")
    stale = sum(int(e.get("n_stale_steps", 0)) for e in episodes)
    block = {
        "control_hz": float(control_hz),
        "n_calls": len(timed),
        "n_steps": n_steps,
        "warmup_calls": int(warmup_calls),
        "latency_model": latency_model,
        "latency_param": None if latency_param is None else float(latency_param),
        "latency_ms": latency,
        "policy_hz": 1000.0 / mean_total if mean_total else None,
        "loop_hz": n_steps / loop_s if loop_s > 0 else None,
        "deadline_misses": misses,
        "deadline_miss_rate": misses / len(timed) if timed else 0.0,
        "tokens_kept": {"mean": sum(kept) / len(kept), "of": max(of)} if kept and of else None,
        "keep_ratio": keep_ratio_summary(timed),
        "flops_per_call": ({s: sum(f.get(s, 0.0) for f in flops) / len(flops) for s in flops[0]}
                           if flops else None),
        "realtime": bool(realtime),
        "n_episodes": len(episodes),
        "deadline_period_ms": control_period_ms(control_hz),
        "stale_steps": stale,
        "stale_step_rate": stale / n_steps if n_steps else 0.0,
        "hold_steps": sum(int(e.get("n_hold_steps", 0)) for e in episodes),
    }
    if latency_model != "measured":
        block["modelled_latency_ms"] = summarize(modelled)
    return block


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _flops(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


def timing_table(block: dict, title: str = "Timing") -> Table:
    """Per-stage latency percentiles and FLOPs, then the loop's rates, misses and staleness."""
    period = block["deadline_period_ms"]
    mode = "real-time" if block["realtime"] else "synchronous"
    model = block["latency_model"] + ("" if block["latency_param"] is None else f" ({block['latency_param']:g})")
    nested = "".join(f"; {s} is part of {' / '.join(NESTED_STAGES[s])}, not added to them"
                     for s in NESTED_STAGES if s in block["latency_ms"])  # select: the pruning method's own time
    table = Table(title=title, caption=(
        f"{mode} loop at {block['control_hz']:g} Hz (deadline {period:.1f} ms), latency model {model}; "
        f"{block['n_calls']} inference calls over {block['n_steps']} steps, "
        f"{block['warmup_calls']} warm-up calls excluded{nested}"))
    table.add_column("stage")
    for col in ("p50 ms", "p90 ms", "p99 ms", "mean ms", "FLOPs/call"):
        table.add_column(col, justify="right")
    flops = block.get("flops_per_call") or {}
    for stage in [s for s in STAGES if s in block["latency_ms"]] + \
                 [s for s in block["latency_ms"] if s not in STAGES]:
        s = block["latency_ms"][stage]
        name = f"[bold]{stage}[/bold]" if stage == "total" else stage
        table.add_row(name, _ms(s["p50"]), _ms(s["p90"]), _ms(s["p99"]), _ms(s["mean"]), _flops(flops.get(stage)))
    table.add_section()
    hz = block["policy_hz"]
    table.add_row("policy Hz", "" if hz is None else f"{hz:.1f}", "", "", "", "")
    table.add_row("loop Hz", "" if block["loop_hz"] is None else f"{block['loop_hz']:.1f}", "", "", "", "")
    table.add_row("deadline misses", f"{block['deadline_misses']}/{block['n_calls']}",
                  f"{100 * block['deadline_miss_rate']:.1f}%", "", "", "")
    table.add_row("stale steps", f"{block['stale_steps']}/{block['n_steps']}",
                  f"{100 * block['stale_step_rate']:.1f}%", "", "", "")
    if block.get("tokens_kept"):
        tk = block["tokens_kept"]
        table.add_row("visual tokens kept", f"{tk['mean']:.1f}/{tk['of']}", "", "", "", "")
    kr = block.get("keep_ratio")
    if kr and kr["min"] < kr["max"]:  # a budget that changed between steps (adaptive)
        table.add_row("keep ratio min / max", f"{kr['min']:.2f} / {kr['max']:.2f}",
                      f"{100 * kr['pruned_share']:.0f}% pruned", "", "", "")
    if block.get("modelled_latency_ms"):
        s = block["modelled_latency_ms"]
        table.add_row("modelled latency", _ms(s["p50"]), _ms(s["p90"]), _ms(s["p99"]), _ms(s["mean"]), "")
    return table
