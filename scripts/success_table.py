"""Markdown success table (per suite and overall, Wilson 95% intervals) from eval_info.json files.

    python scripts/success_table.py cogact=outputs/eval/a/eval_info.json openvla=outputs/eval/b/eval_info.json
    python scripts/success_table.py run=eval_info.json --per-task     # one row per task as well
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla_accel.stats import format_rate


def cell(m: dict) -> str:
    return f"{m['n_success']}/{m['n_episodes']} = {format_rate(m)}"


def table(runs: dict[str, dict], per_task: bool = False) -> str:
    names = list(runs)
    lines = ["| suite | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label: str, metrics: list[dict | None]) -> str:
        return f"| {label} | " + " | ".join(cell(m) if m else "-" for m in metrics) + " |"

    # (suite, task_id) -> metrics, per run
    task_metrics = {n: {(t["task_group"], t["task_id"]): t["metrics"] for t in info["per_task"]}
                    for n, info in runs.items()}
    tasks = {(t["task_group"], t["task_id"]): t["task"] for info in runs.values() for t in info["per_task"]}
    for suite in dict.fromkeys(s for info in runs.values() for s in info["per_group"]):
        lines.append(row(suite, [runs[n]["per_group"].get(suite) for n in names]))
        if per_task:
            lines += [row(f"&nbsp;&nbsp;{tid}: {name}", [task_metrics[n].get((s, tid)) for n in names])
                      for (s, tid), name in tasks.items() if s == suite]
    lines.append("| **all** | " + " | ".join(f"**{cell(runs[n]['overall'])}**" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME=path/to/eval_info.json (column name = NAME)")
    ap.add_argument("--per-task", action="store_true", help="also one row per task")
    args = ap.parse_args()
    runs = {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).parent.name, spec
        runs[name] = json.loads(Path(path).read_text())
    print(table(runs, args.per_task))


if __name__ == "__main__":
    main()
