"""scripts/realtime_plot.py: success vs charged latency from real-time eval_info.json files."""

import json
import subprocess
import sys
from pathlib import Path

from vla_accel.measure.stats import success_metrics

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realtime_plot.py"


def _info(accel: dict, latency_ms: float, successes: int, realtime: bool = True, model: str = "fixed") -> dict:
    return {"overall": success_metrics(successes, 10),
            "config": {"accel": {"name": "none", "method": None, "keep_ratio": None, "skip_layers": [],
                                 "head_cache_interval": 1, **accel}},
            "timing": {"realtime": realtime, "latency_model": model, "latency_param": latency_ms,
                       "control_hz": 20.0, "stale_step_rate": 0.25}}


def _write(root: Path, name: str, info: dict) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "eval_info.json").write_text(json.dumps(info))


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_the_curve_and_the_accelerated_points_are_tabled_and_plotted(tmp_path):
    _write(tmp_path, "a", _info({}, 0, 8))
    _write(tmp_path, "b", _info({}, 200, 2))
    _write(tmp_path, "c", _info({"name": "vla_pruner", "method": "vla_pruner", "keep_ratio": 0.25}, 150, 4))
    _write(tmp_path, "d", _info({"head_cache_interval": 5}, 160, 3))
    out = _run(str(tmp_path), "--out", str(tmp_path / "plot.png"))
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "plot.md").read_text().splitlines()
    assert table[2].startswith("| none | 0 | 8/10 = 80.0%") and table[3].startswith("| none | 200 | 2/10")
    assert any(r.startswith("| vla_pruner@0.25 | 150 | 4/10") for r in table)
    assert any(r.startswith("| head_cache/5 | 160 | 3/10") for r in table)  # not mistaken for `none`
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_a_run_that_is_not_real_time_with_a_fixed_latency_is_refused(tmp_path):
    _write(tmp_path, "a", _info({}, 0, 8, realtime=False))
    out = _run(str(tmp_path), "--out", str(tmp_path / "plot.png"))
    assert out.returncode != 0 and "eval.latency_model=fixed" in out.stderr
