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
    suites = list(dict.fromkeys(s for info in runs.values() for s in info["per_group"]))
    for suite in suites:
        lines.append(f"| {suite} | " + " | ".join(cell(runs[n]["per_group"][suite]) if suite in runs[n]["per_group"]
                                                  else "-" for n in names) + " |")
        if per_task:
            tasks = [t for t in next(iter(runs.values()))["per_task"] if t.get("task_group") == suite]
            for t in tasks:
                row = []
                for n in names:
                    match = [x for x in runs[n]["per_task"] if x.get("task_group") == suite and x["task_id"] == t["task_id"]]
                    row.append(cell(match[0]["metrics"]) if match else "-")
                lines.append(f"| &nbsp;&nbsp;{t['task_id']}: {t['task']} | " + " | ".join(row) + " |")
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
