"""eval_info.json (LeRobot's shape plus Wilson intervals) and the readable table of a run.

Episodes are appended to `eval_episodes.jsonl` as they finish (flushed and fsync'ed), so a killed run
keeps every finished episode; `eval_info.json` is built from the episode records at the end.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vla_accel.measure.stats import format_rate, success_metrics

EPISODE_KEYS = ("episode_ix", "suite", "task_id", "task", "init_state_id", "seed", "success",
                "sum_reward", "max_reward", "n_steps",
                # timing (vla_accel.harness.rollout): inference calls, steps on a stale / the hold action, loop wall s
                "n_calls", "n_stale_steps", "n_hold_steps", "loop_s")
EPISODE_LOG_ONLY_KEYS = ("calls",)  # per-call timings: in eval_episodes.jsonl, not in eval_info.json


class EpisodeLog:
    """Append-only jsonl of per-episode records, durable line by line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "EpisodeLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_episode_log(path: str | Path) -> list[dict]:
    """The records of an episode log; a last line cut short by a kill is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def build_eval_info(per_episode: list[dict], tasks: list[dict], *, eval_s: float,
                    video_paths: list[str], config: dict, n_timed: int | None = None) -> dict:
    """Aggregate episode records into per_task / per_group / overall (interfaces.md's shape).

    tasks: one {"suite", "task_id", "task", "instruction"} per evaluated task, in run order.
    n_timed: how many of the episodes ran within eval_s (a resumed run did not re-run all); default all.
    """
    if not per_episode:
        raise ValueError("no finished episodes to summarise")
    per_task = []
    groups: OrderedDict[str, list[bool]] = OrderedDict()
    for t in tasks:
        outcomes = [e["success"] for e in per_episode
                    if e["suite"] == t["suite"] and e["task_id"] == t["task_id"]]
        if not outcomes:
            continue  # a task the run did not reach before it stopped
        per_task.append({
            "task_group": t["suite"],
            "task_id": t["task_id"],
            "task": t["task"],
            "instruction": t["instruction"],
            "metrics": success_metrics(sum(outcomes), len(outcomes)),
        })
        groups.setdefault(t["suite"], []).extend(outcomes)
    per_group = {suite: success_metrics(sum(o), len(o)) for suite, o in groups.items()}
    all_outcomes = [e["success"] for e in per_episode]
    overall = success_metrics(sum(all_outcomes), len(all_outcomes))
    overall.update({
        "eval_s": float(eval_s),
        "eval_ep_s": float(eval_s) / max(1, len(per_episode) if n_timed is None else n_timed),
        "video_paths": list(video_paths),
    })
    return {"per_episode": per_episode, "per_task": per_task, "per_group": per_group,
            "overall": overall, "config": config}


def write_json_atomic(path: str | Path, data: dict) -> Path:
    """Write JSON to a temp file beside `path`, then rename it into place (never a half file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def results_table(info: dict, title: str = "Evaluation") -> Table:
    """Per-task success with 95% Wilson intervals, then one row per suite and the overall row."""
    table = Table(title=title)
    table.add_column("suite")
    table.add_column("task", justify="right")
    table.add_column("instruction")
    table.add_column("success", justify="right")
    table.add_column("success % [95% CI]", justify="right")
    for t in info["per_task"]:
        m = t["metrics"]
        table.add_row(t["task_group"], str(t["task_id"]), t["instruction"],
                      f"{m['n_success']}/{m['n_episodes']}", format_rate(m))
    table.add_section()
    for suite, m in info["per_group"].items():
        table.add_row(suite, "all", "", f"{m['n_success']}/{m['n_episodes']}", format_rate(m))
    m = info["overall"]
    table.add_row("[bold]overall[/bold]", "", f"{m['eval_ep_s']:.2f} s/episode",
                  f"{m['n_success']}/{m['n_episodes']}", f"[bold]{format_rate(m)}[/bold]")
    return table


def print_results(info: dict, console: Console | None = None, title: str = "Evaluation") -> None:
    (console or Console()).print(results_table(info, title))
