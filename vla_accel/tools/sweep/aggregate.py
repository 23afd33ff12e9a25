"""Turn a sweep directory (its eval jobs' eval_info.json, optionally a bench.json) into one table.

One row per configuration (accel preset x keep ratio x skipped layers):
success % with its Wilson 95% interval and episode count (from the eval jobs), relative success =
accelerated / unaccelerated on the same episodes (same suite, task, init state and seed), policy Hz,
speedup, FLOPs ratio, deadline misses.

Where speed numbers come from (a speedup is only claimed when measured interleaved in one process):
- bench.json (`vla-accel bench`: every configuration timed interleaved in ONE process): Hz, p50
  latency and the speedup over the unaccelerated baseline. `speed_source` = "bench (interleaved)".
- otherwise the eval jobs' timing blocks: Hz is shown, and the speedup is the ratio of two separate
  processes' Hz, labelled `speed_source` = "eval jobs (NOT interleaved)".
The FLOPs ratio is analytic (vla_accel.accel.flops), so it is the same from either source.

bench.json (vla_accel.tools.bench), as read here: {"results": [{"name", "method", "keep_ratio",
"latency_ms": {"total": {"p50", "p90", "mean"}, stage: ...}, "speedup", "paired_speedup",
"flops_per_call", ...}], "machine", "command", "date", ...}. method is an accel preset, "none" (the plain
policy), "layer_skip" (the plain policy with skipped layers: "skip_layers", or the layers in the name
"skip[1, 2]") or "head_cache" (not a sweep point, ignored). speedup = p50 total latency of "none" / this
config's; paired_speedup (CSV only) = the median over rounds of the same round's ratio. Hz from the
bench = 1000 / p50 total latency (the statistic its speedup uses, robust to a busy machine's outliers);
from an eval job, its timing block's policy_hz (1000 / mean latency, docs/interfaces.md).
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vla_accel.measure.stats import success_metrics
from vla_accel.tools.sweep.spec import BASELINE, SweepPoint

EVAL_INFO = "eval_info.json"
BENCH_JSON = "bench.json"
INTERLEAVED = "bench (interleaved)"
NOT_INTERLEAVED = "eval jobs (NOT interleaved)"


@dataclass
class SweepRow:
    """One configuration's results; None where a number is not available."""

    config: str                 # SweepPoint.label, e.g. "vla_pruner@0.25"
    method: str                 # the accel preset
    keep_ratio: float | None    # None: the preset does not prune
    skip_layers: str            # "" or "3,5"
    n_episodes: int
    n_success: int
    pc_success: float           # percent
    ci95_lo: float              # Wilson 95%, percent
    ci95_hi: float
    relative_success: float | None   # pc_success / the baseline's, same episodes; None if baseline is 0 or absent
    same_episodes: bool | None       # the job ran exactly the baseline's episodes (None: no baseline)
    policy_hz: float | None
    latency_p50_ms: float | None
    speedup: float | None
    paired_speedup: float | None     # bench only: median over rounds of the same round's latency ratio
    speed_source: str | None         # INTERLEAVED or NOT_INTERLEAVED
    flops_ratio: float | None        # analytic FLOPs per call / the baseline's
    tokens_kept: float | None        # mean visual tokens kept per call
    deadline_misses: int | None
    deadline_miss_rate: float | None
    job_dir: str

    @property
    def point(self) -> SweepPoint:
        skip = tuple(int(x) for x in self.skip_layers.split(",") if x)
        return SweepPoint(self.method, self.keep_ratio, skip)


def point_of_config(config: dict) -> SweepPoint:
    """The sweep point an eval job ran, from eval_info.json's resolved config (no accel group = none)."""
    accel = config.get("accel") or {"name": BASELINE}
    keep = accel.get("keep_ratio") if accel.get("method") else None
    skip = tuple(sorted(int(x) for x in (accel.get("skip_layers") or ())))
    return SweepPoint(str(accel.get("name", BASELINE)), None if keep is None else float(keep), skip)


def _episode_keys(info: dict) -> list[tuple]:
    return sorted((e["suite"], e["task_id"], e["init_state_id"], e["seed"]) for e in info["per_episode"])


def find_eval_infos(sweep_dir: str | Path) -> dict[SweepPoint, tuple[Path, dict]]:
    """{point: (job dir, eval_info)} for every eval_info.json under sweep_dir.

    A configuration found twice on the same episodes (e.g. `vla-accel eval -m accel=none,fastv
    accel.keep_ratio=0.5,0.25` runs `none` once per ratio, the ratio meaning nothing to it) counts once,
    with a warning; twice on different episodes raises (which one would count?)."""
    found: dict[SweepPoint, tuple[Path, dict]] = {}
    for path in sorted(Path(sweep_dir).rglob(EVAL_INFO)):
        info = json.loads(path.read_text())
        point = point_of_config(info.get("config") or {})
        if point in found:
            first_dir, first = found[point]
            if _episode_keys(first) != _episode_keys(info):
                raise ValueError(f"two eval jobs of the configuration {point.label!r} on different episodes: "
                                 f"{first_dir} and {path.parent}; keep one (remove the other directory)")
            warnings.warn(f"the configuration {point.label!r} ran twice on the same episodes; using {first_dir}, "
                          f"not {path.parent}", stacklevel=2)
            continue
        found[point] = (path.parent, info)
    return found


def read_bench(path: str | Path) -> dict[SweepPoint, dict]:
    """{point: bench result} from a bench.json (shape in the module docstring), each result with a
    "policy_hz" added (1000 / p50 total latency)."""
    data = json.loads(Path(path).read_text())
    entries = data.get("results")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected the 'results' list of `vla-accel bench`, got keys {sorted(data)}")
    out = {}
    for e in entries:
        point = _bench_point(e)
        if point is None:
            continue
        p50 = ((e.get("latency_ms") or {}).get("total") or {}).get("p50")
        out[point] = {**e, "policy_hz": 1000.0 / p50 if p50 else None}
    return out


def _bench_point(e: dict) -> SweepPoint | None:
    method = str(e["method"])
    if method == "head_cache":
        return None  # a DiT head-cache config: not something a sweep runs
    skip = e.get("skip_layers")
    if method == "layer_skip":
        if skip is None:  # "skip[1, 2]"
            skip = json.loads(str(e["name"])[len("skip"):])
        method = BASELINE
    keep = e.get("keep_ratio")
    return SweepPoint(method, None if keep is None else float(keep), tuple(sorted(int(x) for x in skip or ())))


def _total_flops(flops: dict | None) -> float | None:
    if not flops:
        return None
    return float(flops["total"]) if "total" in flops else float(sum(flops.values()))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _speed(timing: dict | None) -> tuple[float | None, float | None]:
    """(Hz, p50 total latency ms) from a timing block or a bench entry."""
    if not timing:
        return None, None
    total = (timing.get("latency_ms") or {}).get("total") or {}
    return timing.get("policy_hz"), total.get("p50")


def aggregate(sweep_dir: str | Path, bench_path: str | Path | None = None) -> list[SweepRow]:
    """Rows for every eval job under sweep_dir, the baseline first, then by method, skips, keep ratio
    (descending). bench_path defaults to sweep_dir/bench.json when that exists."""
    sweep_dir = Path(sweep_dir)
    jobs = find_eval_infos(sweep_dir)
    if not jobs:
        raise ValueError(f"no {EVAL_INFO} under {sweep_dir}: is it a sweep (or `vla-accel eval -m`) directory?")
    if bench_path is None and (sweep_dir / BENCH_JSON).exists():
        bench_path = sweep_dir / BENCH_JSON
    bench = read_bench(bench_path) if bench_path is not None else {}

    base_point = SweepPoint(BASELINE, None, ())
    base_info = jobs.get(base_point, (None, None))[1]
    base_pc = base_info["overall"]["pc_success"] if base_info else None
    base_keys = _episode_keys(base_info) if base_info else None
    base_timing = base_info.get("timing") if base_info else None
    base_bench = bench.get(base_point)

    rows = []
    for point, (job_dir, info) in jobs.items():
        n_success = sum(bool(e["success"]) for e in info["per_episode"])
        m = success_metrics(n_success, len(info["per_episode"]))
        same = None if base_keys is None else _episode_keys(info) == base_keys
        timing = info.get("timing")
        if point in bench:
            entry = bench[point]
            hz, p50 = _speed(entry)
            speedup = entry.get("speedup")
            if speedup is None and base_bench is not None:  # both from the same interleaved run
                speedup = _ratio(_mean(base_bench), _mean(entry))
            source, paired = INTERLEAVED, entry.get("paired_speedup")
            flops = entry.get("flops_per_call") or (timing or {}).get("flops_per_call")
            base_flops = (base_bench or {}).get("flops_per_call") or (base_timing or {}).get("flops_per_call")
        else:
            hz, p50 = _speed(timing)
            speedup = _ratio(hz, (base_timing or {}).get("policy_hz"))
            source, paired = (NOT_INTERLEAVED if hz is not None else None), None
            flops, base_flops = (timing or {}).get("flops_per_call"), (base_timing or {}).get("flops_per_call")
        if point == base_point:
            flops_ratio = 1.0 if _total_flops(flops) else None
        else:
            flops_ratio = _ratio(_total_flops(flops), _total_flops(base_flops))
        kept = (timing or {}).get("tokens_kept") or {}
        rows.append(SweepRow(
            config=point.label, method=point.accel, keep_ratio=point.keep_ratio,
            skip_layers=",".join(map(str, point.skip_layers)),
            n_episodes=m["n_episodes"], n_success=m["n_success"], pc_success=m["pc_success"],
            ci95_lo=m["ci95"][0], ci95_hi=m["ci95"][1],
            relative_success=(m["pc_success"] / base_pc if same and base_pc else None),
            same_episodes=same, policy_hz=hz, latency_p50_ms=p50, speedup=speedup, paired_speedup=paired,
            speed_source=source,
            flops_ratio=flops_ratio, tokens_kept=kept.get("mean"),
            deadline_misses=(timing or {}).get("deadline_misses"),
            deadline_miss_rate=(timing or {}).get("deadline_miss_rate"),
            job_dir=str(job_dir.relative_to(sweep_dir)) if job_dir.is_relative_to(sweep_dir) else str(job_dir),
        ))
    rows.sort(key=lambda r: (not r.point.is_baseline, r.method != BASELINE, r.method, r.skip_layers,
                             -(r.keep_ratio if r.keep_ratio is not None else 2.0)))
    return rows


def _mean(entry: dict) -> float | None:
    return ((entry.get("latency_ms") or {}).get("total") or {}).get("mean")


def write_csv(rows: list[SweepRow], path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(SweepRow)])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    return path


def _fmt(x, spec: str, suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


TABLE_HEADER = ("config", "success % [95% CI]", "n", "rel. success", "policy Hz", "speedup", "FLOPs ratio",
                "deadline misses")


def table_cells(r: SweepRow) -> tuple[str, ...]:
    """One row of the side-by-side table as text (shared by the Markdown file and the terminal)."""
    rel = _fmt(r.relative_success, ".2f")
    if r.same_episodes is False:
        rel = "n/a (other episodes)"
    speed = _fmt(r.speedup, ".2f", "x")
    if r.speedup is not None and r.speed_source == NOT_INTERLEAVED:
        speed += "*"  # footnoted by speed_note: separate processes, not a controlled comparison
    misses = "n/a" if r.deadline_misses is None else f"{r.deadline_misses} ({100 * r.deadline_miss_rate:.0f}%)"
    return (r.config + (" (baseline)" if r.point.is_baseline else ""),
            f"{r.pc_success:.1f} [{r.ci95_lo:.1f}, {r.ci95_hi:.1f}]", f"{r.n_success}/{r.n_episodes}", rel,
            _fmt(r.policy_hz, ".1f"), speed, _fmt(r.flops_ratio, ".3f"), misses)


def speed_note(rows: list[SweepRow]) -> str:
    sources = {r.speed_source for r in rows if r.speed_source}
    if sources == {INTERLEAVED}:
        return ("Hz (1000 / p50 latency) and speedups (p50 ratio): `vla-accel bench`, every configuration timed "
                "interleaved in one process.")
    if INTERLEAVED in sources:
        return ("Hz and speedups: interleaved bench where available; speedups marked * divide separate eval "
                "jobs' timings and are NOT interleaved (not a controlled comparison).")
    if sources:
        return ("Hz from the eval jobs' timing blocks; speedups (*) divide separate processes' Hz and are NOT "
                "interleaved (run `vla-accel bench` for a controlled comparison).")
    return "No timing found (eval_info.json without a timing block and no bench.json)."


def markdown_table(rows: list[SweepRow]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    lines += ["", "Success: Wilson 95% interval; relative success = accelerated / unaccelerated success on the "
              "same episodes (suite, task, init state, seed). FLOPs ratio: analytic FLOPs per policy call "
              "(vla_accel.accel.flops) / the baseline's. " + speed_note(rows)]
    return "\n".join(lines) + "\n"
