"""Markdown success table (per suite and overall, Wilson 95% intervals) from eval_info.json files.

    python scripts/success_table.py cogact=outputs/eval/a/eval_info.json openvla=outputs/eval/b/eval_info.json
    python scripts/success_table.py run=eval_info.json --per-task     # one row per task as well
    python scripts/success_table.py cogact=goal/eval_info.json,object/eval_info.json   # one column, two runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla_accel.measure.stats import format_rate, success_metrics


def cell(m: dict) -> str:
    return f"{m['n_success']}/{m['n_episodes']} = {format_rate(m)}"


def merge(infos: list[dict]) -> dict:
    """One column from several eval runs of one policy (e.g. one per suite): their suites side by side,
    the overall rate pooled over all their episodes."""
    per_group: dict[str, dict] = {}
    for info in infos:
        if set(per_group) & set(info["per_group"]):
            raise ValueError(f"suite(s) {sorted(set(per_group) & set(info['per_group']))} appear in two runs of one column")
        per_group.update(info["per_group"])
    n_success = sum(info["overall"]["n_success"] for info in infos)
    n_episodes = sum(info["overall"]["n_episodes"] for info in infos)
    return {"per_group": per_group, "per_task": [t for info in infos for t in info["per_task"]],
            "overall": success_metrics(n_success, n_episodes)}


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
    ap.add_argument("runs", nargs="+", help="NAME=path/to/eval_info.json[,another.json] (column name = NAME)")
    ap.add_argument("--per-task", action="store_true", help="also one row per task")
    args = ap.parse_args()
    runs = {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).parent.name, spec
        runs[name] = merge([json.loads(Path(p).read_text()) for p in path.split(",")])
    print(table(runs, args.per_task))


if __name__ == "__main__":
    main()
