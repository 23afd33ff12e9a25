"""Sweep plots (matplotlib, Agg): success vs policy Hz and success vs FLOPs ratio.

One line per (method, skipped layers) through its keep ratios (points labelled with the ratio), the
unaccelerated baseline as a black star, error bars from the Wilson 95% interval, and the Pareto front
(maximise success; maximise Hz / minimise FLOPs) ringed in red and joined by a dashed line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from vla_accel.tools.pareto import pareto_front  # noqa: E402
from vla_accel.tools.sweep.aggregate import NOT_INTERLEAVED, SweepRow  # noqa: E402

# (file stem, row attribute on x, x label, maximise x?)
PLOTS = (
    ("success_vs_hz", "policy_hz", "policy Hz (inference calls / s)", True),
    ("success_vs_flops", "flops_ratio", "FLOPs per call / unaccelerated", False),
)


def _line_key(r: SweepRow) -> str:
    return r.method + (f" skip[{r.skip_layers}]" if r.skip_layers else "")


def plot_success_vs(rows: Sequence[SweepRow], x_attr: str, x_label: str, maximize_x: bool, path: str | Path,
                    title: str = "") -> Path | None:
    """Write one plot; returns its path, or None when no row has an x value (e.g. no timing)."""
    rows = [r for r in rows if getattr(r, x_attr) is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    lines: dict[str, list[SweepRow]] = {}
    for r in rows:
        if not r.point.is_baseline:
            lines.setdefault(_line_key(r), []).append(r)
    for key, members in lines.items():
        members.sort(key=lambda r: getattr(r, x_attr))
        xs = [getattr(r, x_attr) for r in members]
        ys = [r.pc_success for r in members]
        err = [[r.pc_success - r.ci95_lo for r in members], [r.ci95_hi - r.pc_success for r in members]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, linewidth=1.5, label=key)
        for r, x, y in zip(members, xs, ys):
            if r.keep_ratio is not None:
                ax.annotate(f"{r.keep_ratio:g}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for r in rows:
        if r.point.is_baseline:
            x = getattr(r, x_attr)
            ax.errorbar([x], [r.pc_success], yerr=[[r.pc_success - r.ci95_lo], [r.ci95_hi - r.pc_success]],
                        marker="*", markersize=16, color="black", capsize=3, linestyle="none",
                        label="unaccelerated", zorder=5)
            ax.axhline(r.pc_success, color="black", linewidth=0.8, linestyle=":", zorder=1)
    front = [rows[i] for i in pareto_front([(r.pc_success, getattr(r, x_attr)) for r in rows],
                                           maximize=(True, maximize_x))]
    front.sort(key=lambda r: getattr(r, x_attr))
    ax.plot([getattr(r, x_attr) for r in front], [r.pc_success for r in front], color="red", alpha=0.5,
            linestyle="--", linewidth=1, zorder=2)
    ax.scatter([getattr(r, x_attr) for r in front], [r.pc_success for r in front], s=160, facecolors="none",
               edgecolors="red", linewidths=1.5, label="Pareto front", zorder=6)
    ax.set_xlabel(x_label)
    ax.set_ylabel("success % (Wilson 95% CI)")
    ax.set_ylim(-5, 105)
    ax.grid(True, alpha=0.3)
    if x_attr == "policy_hz" and any(r.speed_source == NOT_INTERLEAVED for r in rows):
        title += " [Hz from separate eval jobs: NOT interleaved]"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(rows: Sequence[SweepRow], out_dir: str | Path, title: str = "") -> list[Path]:
    """success_vs_hz.png and success_vs_flops.png in out_dir (each only when its x values exist)."""
    out_dir = Path(out_dir)
    written = []
    for stem, attr, label, up in PLOTS:
        p = plot_success_vs(rows, attr, label, up, out_dir / f"{stem}.png", title=title)
        if p is not None:
            written.append(p)
    return written
