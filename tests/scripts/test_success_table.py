"""scripts/success_table.py: a markdown table from eval_info.json files, a column pooled from several."""

import json
import subprocess
import sys
from pathlib import Path

from vla_accel.measure.stats import success_metrics

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "success_table.py"


def _info(suite: str, successes: list[int]) -> dict:
    tasks = [{"task_group": suite, "task_id": i, "task": f"task_{i}", "metrics": success_metrics(k, 10)}
             for i, k in enumerate(successes)]
    total = success_metrics(sum(successes), 10 * len(successes))
    return {"per_task": tasks, "per_group": {suite: total}, "overall": total}


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path, check=False)


def test_a_column_pools_the_runs_of_one_policy(tmp_path):
    (tmp_path / "goal.json").write_text(json.dumps(_info("goal", [10, 6])))
    (tmp_path / "object.json").write_text(json.dumps(_info("object", [2, 0])))
    out = _run(tmp_path, "cogact=goal.json,object.json", "other=object.json")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert rows[0] == "| suite | cogact | other |"
    assert rows[2].startswith("| goal | 16/20 = 80.0% [") and rows[2].endswith("| - |")
    assert rows[3].startswith("| object | 2/20 = 10.0% [")
    assert rows[4].startswith("| **all** | **18/40 = 45.0% [") and "**2/20 = 10.0% [" in rows[4]


def test_one_suite_twice_in_a_column_is_refused(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_info("goal", [1])))
    out = _run(tmp_path, "x=a.json,a.json")
    assert out.returncode != 0 and "appear in two runs" in out.stderr
