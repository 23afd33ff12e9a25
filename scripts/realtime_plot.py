"""Does speed buy success? Success against the latency a real-time run charged, from eval_info.json files.

Each run is one `vla-accel eval ... eval.realtime=true eval.latency_model=fixed eval.latency_ms=L` (the
latency every inference call is charged on the simulated clock, so the episodes are reproducible). The
unaccelerated runs at several L draw the curve of what latency costs; an accelerated configuration is a
point at its own latency (the base latency divided by its measured speedup), to read against the curve
at the same control rate.

    python scripts/realtime_plot.py multirun/eval/<date>/<time> outputs/eval/a --out results/realtime/success_vs_latency.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vla_accel.accel.preset_config import load_preset, preset_names  # noqa: E402
from vla_accel.measure.stats import format_rate  # noqa: E402


def label_of(info: dict) -> str:
    """The accel preset, its keep ratio, and what the run set beyond the preset's own file (layers skipped,
    a head cache): 'none', 'vla_pruner@0.25', 'head_cache/5' (none + a cache), 'fastv@0.25 + skip[4,5]'."""
    accel = (info.get("config") or {}).get("accel") or {}
    name = str(accel.get("name") or "none")
    own = load_preset(name) if name in preset_names() else {}
    parts = [f"{name}@{accel['keep_ratio']:g}" if accel.get("method") and accel.get("keep_ratio") is not None
             else name]
    if list(accel.get("skip_layers") or []) != list(own.get("skip_layers") or []):
        parts.append(f"skip[{','.join(map(str, accel['skip_layers']))}]")
    if int(accel.get("head_cache_interval") or 1) != int(own.get("head_cache_interval") or 1):
        parts.append(f"head_cache/{accel['head_cache_interval']}")
    if parts[0] == "none" and len(parts) > 1:
        parts = parts[1:]
    return " + ".join(parts)


def read_runs(paths: list[Path]) -> list[dict]:
    """One row per eval_info.json found under `paths`: label, charged latency, success, its interval."""
    rows = []
    for root in paths:
        for path in sorted(root.rglob("eval_info.json")) if root.is_dir() else [root]:
            info = json.loads(path.read_text())
            timing = info.get("timing") or {}
            if not timing.get("realtime") or timing.get("latency_model") != "fixed":
                raise ValueError(f"{path}: not a real-time run with eval.latency_model=fixed")
            o = info["overall"]
            rows.append({"label": label_of(info), "latency_ms": float(timing["latency_param"]),
                         "control_hz": float(timing["control_hz"]), "n_success": o["n_success"],
                         "n_episodes": o["n_episodes"], "pc": o["pc_success"], "lo": o["ci95"][0],
                         "hi": o["ci95"][1], "stale": timing.get("stale_step_rate"), "path": str(path.parent)})
    if len({r["control_hz"] for r in rows}) > 1:
        raise ValueError("the runs used different control rates; compare at one")
    return rows


def plot(rows: list[dict], out: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    base = sorted((r for r in rows if r["label"] == "none"), key=lambda r: r["latency_ms"])
    if base:
        ax.errorbar([r["latency_ms"] for r in base], [r["pc"] for r in base],
                    yerr=[[r["pc"] - r["lo"] for r in base], [r["hi"] - r["pc"] for r in base]],
                    color="black", marker="o", capsize=3, label="unaccelerated")
    for label in sorted({r["label"] for r in rows} - {"none"}):
        pts = sorted((r for r in rows if r["label"] == label), key=lambda r: r["latency_ms"])
        ax.errorbar([r["latency_ms"] for r in pts], [r["pc"] for r in pts],
                    yerr=[[r["pc"] - r["lo"] for r in pts], [r["hi"] - r["pc"] for r in pts]],
                    marker="s", markersize=8, capsize=3, linestyle="none", label=label)
    period = 1000.0 / rows[0]["control_hz"]
    for k in range(1, int(max(r["latency_ms"] for r in rows) // period) + 1):  # where the delay steps up
        ax.axvline(k * period, color="grey", linewidth=0.5, alpha=0.4)
    ax.set_xlabel(f"latency charged per call, ms (grey: multiples of the {period:.0f} ms control period)")
    ax.set_ylabel("success % (Wilson 95% CI)")
    ax.set_ylim(-5, 105)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="eval_info.json files or directories holding them")
    ap.add_argument("--out", type=Path, required=True, help="the plot (.png); a .md table is written beside it")
    ap.add_argument("--title", default="real-time success vs latency")
    args = ap.parse_args()
    rows = read_runs(args.paths)
    if not rows:
        raise SystemExit("no eval_info.json found")
    plot(rows, args.out, args.title)
    lines = ["| config | latency ms | success [95% CI] | stale steps |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["label"] != "none", r["label"], r["latency_ms"])):
        stale = "-" if r["stale"] is None else f"{100 * r['stale']:.0f}%"
        rate = format_rate({"pc_success": r["pc"], "ci95": [r["lo"], r["hi"]]})
        lines.append(f"| {r['label']} | {r['latency_ms']:g} | {r['n_success']}/{r['n_episodes']} = {rate} | {stale} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
