import csv
import json

import pytest
from fixtures.sweep_fixtures import EPISODES, accel, make_sweep_dir, successes, write_eval_info

from vla_accel.tools.sweep.aggregate import INTERLEAVED, NOT_INTERLEAVED, aggregate, markdown_table, write_csv
from vla_accel.tools.sweep.run import main


def _by_config(rows):
    return {r.config: r for r in rows}


def test_rows_from_eval_infos_and_bench(tmp_path):
    rows = aggregate(make_sweep_dir(tmp_path))
    assert [r.config for r in rows] == ["none", "fastv@0.5", "fastv@0.25", "vla_pruner@0.5", "vla_pruner@0.25"]
    by = _by_config(rows)
    base, vp = by["none"], by["vla_pruner@0.25"]
    assert (base.n_success, base.n_episodes, base.pc_success) == (8, 10, 80.0)
    assert base.ci95_lo == pytest.approx(49.0, abs=0.1) and base.ci95_hi == pytest.approx(94.3, abs=0.1)
    assert vp.relative_success == pytest.approx(60.0 / 80.0) and vp.same_episodes
    # speed from the interleaved bench, not from the eval jobs (18 Hz there)
    assert vp.speed_source == INTERLEAVED and vp.speedup == 2.0 and vp.policy_hz == 40.0
    assert vp.latency_p50_ms == 25.0
    assert vp.flops_ratio == pytest.approx(0.30) and base.flops_ratio == 1.0
    assert base.deadline_misses == 30 and vp.deadline_miss_rate == 0.05


def test_without_bench_speedups_are_labelled_not_interleaved(tmp_path):
    rows = aggregate(make_sweep_dir(tmp_path, with_bench=False))
    fastv = _by_config(rows)["fastv@0.25"]
    assert fastv.speed_source == NOT_INTERLEAVED
    assert fastv.policy_hz == 19.0 and fastv.speedup == pytest.approx(1.9)
    md = markdown_table(rows)
    assert "| 1.90x* |" in md and "NOT interleaved" in md


def test_speedup_computed_from_bench_latencies_when_bench_gives_none(tmp_path):
    root = make_sweep_dir(tmp_path)
    data = json.loads((root / "bench.json").read_text())
    for e in data["results"]:
        e.pop("speedup")
    (root / "bench.json").write_text(json.dumps(data))
    assert _by_config(aggregate(root))["fastv@0.25"].speedup == pytest.approx(2.2)


def test_relative_success_needs_the_same_episodes(tmp_path):
    root = make_sweep_dir(tmp_path, with_bench=False)
    other = [(s, t, k, seed + 100) for s, t, k, seed in EPISODES]  # same tasks, other seeds
    write_eval_info(root / "pruned" / "divprune", accel("divprune", 0.5), successes(9), episodes=other)
    row = _by_config(aggregate(root))["divprune@0.5"]
    assert row.same_episodes is False and row.relative_success is None
    assert "n/a (other episodes)" in markdown_table(aggregate(root))


def test_no_baseline_or_zero_baseline_gives_no_relative_success(tmp_path):
    write_eval_info(tmp_path / "a", accel("fastv", 0.5), successes(5))
    row = aggregate(tmp_path)[0]
    assert row.relative_success is None and row.same_episodes is None and row.speedup is None
    write_eval_info(tmp_path / "b", accel("none"), successes(0))
    assert _by_config(aggregate(tmp_path))["fastv@0.5"].relative_success is None


def test_skip_layers_are_their_own_configuration(tmp_path):
    root = make_sweep_dir(tmp_path)
    write_eval_info(root / "s", accel("vla_pruner", 0.5, skip=[3, 1]), successes(7), hz=20.0, flops_total=40)
    write_eval_info(root / "t", accel("none", skip=[2]), successes(8), hz=12.0, flops_total=90)
    by = _by_config(aggregate(root))
    assert by["vla_pruner@0.5 skip[1,3]"].skip_layers == "1,3"
    assert by["none"].pc_success == 80.0  # the unskipped `none` stays the baseline
    # the bench times skipping on the plain policy ("layer_skip" rows) ...
    assert by["none skip[2]"].speed_source == INTERLEAVED and by["none skip[2]"].speedup == 1.25
    assert by["none skip[2]"].flops_ratio == pytest.approx(0.9)
    # ... but not pruning + skipping together: that row keeps its eval job's Hz, labelled
    assert by["vla_pruner@0.5 skip[1,3]"].speed_source == NOT_INTERLEAVED


def test_a_bench_json_of_another_shape_is_a_clear_error(tmp_path):
    root = make_sweep_dir(tmp_path)
    (root / "bench.json").write_text(json.dumps({"configs": []}))
    with pytest.raises(ValueError, match="expected the 'results' list"):
        aggregate(root)


def test_a_configuration_run_twice_counts_once_on_the_same_episodes_and_raises_on_others(tmp_path):
    root = make_sweep_dir(tmp_path)
    # `eval -m accel=none,fastv accel.keep_ratio=0.5,0.25` runs `none` once per (meaningless) ratio
    write_eval_info(root / "zz" / "none_again", {**accel("none"), "keep_ratio": 0.25}, successes(3))
    with pytest.warns(UserWarning, match="'none' ran twice on the same episodes"):
        rows = aggregate(root)
    assert _by_config(rows)["none"].n_success == 8 and len(rows) == 5
    other = [(s, t, k, seed + 1) for s, t, k, seed in EPISODES]
    write_eval_info(root / "again", accel("fastv", 0.25), successes(1), episodes=other)
    with pytest.raises(ValueError, match="two eval jobs of the configuration 'fastv@0.25' on different episodes"):
        aggregate(root)


def test_empty_directory_raises(tmp_path):
    with pytest.raises(ValueError, match="no eval_info.json"):
        aggregate(tmp_path)


def test_csv_round_trip(tmp_path):
    rows = aggregate(make_sweep_dir(tmp_path / "s"))
    with open(write_csv(rows, tmp_path / "x.csv")) as f:
        read = list(csv.DictReader(f))
    assert [r["config"] for r in read] == [r.config for r in rows]
    assert read[0]["keep_ratio"] == "" and float(read[4]["speedup"]) == 2.0


def test_aggregate_command_writes_table_and_plots(tmp_path, capsys):
    root = make_sweep_dir(tmp_path)
    assert main(["aggregate", str(root)]) == 0
    out = capsys.readouterr().out
    assert "vla_pruner@0.25" in out and "interleaved" in out
    for name in ("sweep.csv", "sweep.md", "success_vs_hz.png", "success_vs_flops.png"):
        assert (root / name).stat().st_size > 0
    md = (root / "sweep.md").read_text()
    assert "| none (baseline) | 80.0 [49.0, 94.3] | 8/10 | 1.00 | 20.0 | 1.00x | 1.000 | 30 (30%) |" in md


def test_aggregate_command_on_a_missing_directory_fails(tmp_path, capsys):
    assert main(["aggregate", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
