import re
from pathlib import Path

import pytest

from vla_accel.tools.sweep import run as sweep_run
from vla_accel.tools.sweep.spec import SweepPoint, SweepSpec


def spec(**kw):
    return SweepSpec(**{"methods": ("vla_pruner", "fastv"), "keep_ratios": (0.5, 0.25), **kw})


def test_points_include_the_baseline_once_and_skip_ratios_for_non_pruning_presets():
    s = spec(methods=("vla_pruner", "vla_cache"), skip_layers=([], [2, 1]))
    assert [p.label for p in s.points()] == [
        "none", "none skip[1,2]", "vla_pruner@0.5", "vla_pruner@0.25", "vla_pruner@0.5 skip[1,2]",
        "vla_pruner@0.25 skip[1,2]", "vla_cache", "vla_cache skip[1,2]"]
    assert spec(methods=("none", "fastv")).all_methods == ("none", "fastv")


def test_multirun_parts_are_cartesian_blocks_covering_every_point_once():
    s = spec(methods=("vla_pruner", "fastv", "vla_cache"), skip_layers=([], [3]))
    parts = s.multirun_parts()
    assert [p.name for p in parts] == ["unpruned", "pruned"]
    assert parts[0].sweep_overrides == ("accel=none,vla_cache", "accel.skip_layers=[],[3]")
    assert parts[1].sweep_overrides == ("accel=vla_pruner,fastv", "accel.keep_ratio=0.5,0.25",
                                        "accel.skip_layers=[],[3]")
    covered = [p for part in parts for p in part.points]
    assert sorted(covered) == sorted(s.points()) and len(set(covered)) == len(covered) == 2 * 2 + 2 * 2 * 2


def test_prune_layer_goes_to_the_pruned_block_and_the_bench_only(monkeypatch):
    s = spec(methods=("vla_pruner", "vla_cache"), prune_layer=1)
    unpruned, pruned = s.multirun_parts()
    assert pruned.sweep_overrides[-1] == "accel.prune_layer=1"
    assert not any("prune_layer" in o for o in unpruned.sweep_overrides)
    assert "bench.prune_layer=1" in sweep_run.bench_command(s, [], Path("out"))
    assert not any("prune_layer" in a for a in sweep_run.bench_command(spec(), [], Path("out")))


@pytest.mark.parametrize("kw, match", [
    ({"prune_layer": -1}, "prune_layer must be null or an integer >= 0"),
    ({"methods": ("vla_prunr",)}, "unknown accel preset 'vla_prunr'. Did you mean 'vla_pruner'"),
    ({"methods": ()}, "sweep.methods is empty"),
    ({"methods": ("fastv", "fastv")}, r"lists \['fastv'\] more than once"),
    ({"keep_ratios": ()}, "keep_ratios is empty"),
    ({"keep_ratios": (0.5, 1.5)}, r"in \(0, 1\], got 1.5"),
    ({"keep_ratios": (0.0,)}, r"in \(0, 1\], got 0.0"),
    ({"keep_ratios": (0.5, 0.5)}, "more than once"),
    ({"skip_layers": ()}, "skip_layers is empty"),
    ({"skip_layers": ([1, 1],)}, "distinct layer indices"),
    ({"skip_layers": ([-1],)}, "distinct layer indices"),
    ({"skip_layers": ([1, 2], [2, 1])}, "more than once"),
    ({"launcher": "rey"}, "Did you mean 'ray'"),
    ({"n_jobs": 0}, "n_jobs"),
    ({"eval_overrides": ("accel=fastv",)}, "the sweep sets accel"),
    ({"eval_overrides": ("n_episodes",)}, "Hydra overrides"),
])
def test_bad_spec_is_a_clear_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        spec(**kw)


@pytest.mark.parametrize("kw, match", [
    ({"prune_layer": True}, "Value 'True' of type 'bool' could not be converted to Integer\n    full_key: prune_layer"),
    ({"keep_ratios": ["half"]}, "Value 'half' of type 'str' could not be converted to Float\n    full_key: keep_ratios"),
    ({"n_jobs": 1.5}, "could not be converted to Integer\n    full_key: n_jobs"),
])
def test_a_wrong_type_fails_by_the_schema_as_at_compose(kw, match):
    """A dict goes through SweepSchema's types (what Hydra checks at compose); the message names the key."""
    with pytest.raises(ValueError, match=match):
        SweepSpec.from_config({"methods": ["vla_pruner"], "keep_ratios": [0.5], **kw})
    assert SweepSpec.from_config({"methods": ["fastv"], "keep_ratios": [1], "prune_layer": "1"}).prune_layer == 1
    with pytest.raises(ValueError, match="sweep.prune_layer=true"):
        sweep_run.compose_sweep(["sweep.prune_layer=true"])


def test_keep_ratios_are_not_needed_without_pruning_presets():
    assert [p.label for p in spec(methods=("vla_cache",), keep_ratios=()).points()] == ["none", "vla_cache"]


def test_compose_reads_presets_and_overrides():
    s, output_dir = sweep_run.compose_sweep([])
    assert s.methods == ("vla_pruner", "fastv", "efficientvla_combo") and s.keep_ratios == (0.25,) and s.bench
    assert s.prune_layer == 2 and output_dir is None  # the shipped goal policy's K (8 layers)
    s, output_dir = sweep_run.compose_sweep(["sweep=budgets", "sweep.keep_ratios=[0.5]", "sweep.output_dir=/x"])
    assert len(s.methods) == 5 and s.keep_ratios == (0.5,) and s.launcher == "joblib" and output_dir == "/x"
    assert s.prune_layer == 2 and "policy=cogact_goal" in s.eval_overrides  # the 8-layer goal policy, K=2
    assert "eval.n_episodes=10" in s.eval_overrides  # 100 episodes per row (10 tasks x 10 init states)
    with pytest.raises(ValueError, match="sweep config"):
        sweep_run.compose_sweep(["sweep=nope"])


def test_split_args_and_command_line_wins_over_the_preset():
    sweep_args, eval_args, bench_args = sweep_run.split_args(
        ["sweep=budgets", "sweep.n_jobs=2", "env=goal", "+x.y=1", "bench.rounds=3"])
    assert sweep_args == ["sweep=budgets", "sweep.n_jobs=2"] and eval_args == ["env=goal", "+x.y=1"]
    assert bench_args == ["bench.rounds=3"]
    assert sweep_run.merge_overrides(("env=spatial", "eval.n_episodes=2"), ["env=goal"]) == [
        "eval.n_episodes=2", "env=goal"]
    with pytest.raises(ValueError, match="drop -m"):
        sweep_run.split_args(["-m"])
    with pytest.raises(ValueError, match="bench.<key>=<value>"):
        spec(bench_overrides=("eval.n_episodes=3",))


@pytest.fixture
def launches(monkeypatch):
    """Record every child command the sweep would start (evals and bench) instead of running it."""
    calls = []
    monkeypatch.setattr(sweep_run, "launch", lambda cmd: calls.append(cmd) or 0)
    return calls


@pytest.mark.parametrize("args, match", [
    (["sweep.methods=[vla_pruner,fastvv]"], "Did you mean 'fastv'"),
    (["sweep.methods=[]"], "sweep.methods is empty"),
    (["sweep.keep_ratios=[0.5,2.0]"], r"in \(0, 1\], got 2.0"),
    (["sweep.keep_ratios=[0.5,0.5]"], "more than once"),
    (["env.suite=spatail"], "unknown suite 'spatail'. Did you mean 'spatial'"),
    (["env=spatail"], "Could not find 'env/spatail'"),
    (["env.task_ids=[99]"], "unknown task_id 99"),
    (["eval.n_episodes=0"], "n_episodes must be a positive integer"),
    (["eval.control_hz=-1"], "control_hz must be null or a positive number"),
    (["policy=expert"], "no LLM to accelerate"),
    (["policy.path=/no/such/checkpoint"], "does not exist"),
    (["policy=cogact_small"], "needs policy.path"),  # an architecture preset, no checkpoint
    (["sweep.methods=[vla_pruner]", "accel.keep_ratio=0.5"], "the sweep sets accel"),
])
def test_a_bad_sweep_fails_before_any_eval_is_launched(args, match, launches, capsys, tmp_path):
    rc = sweep_run.main([*args, f"sweep.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and launches == []
    assert "vla-accel sweep: error:" in err
    assert re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_a_missing_launcher_plugin_is_reported_before_launch(monkeypatch, launches, capsys, tmp_path):
    real = sweep_run.importlib.util.find_spec
    monkeypatch.setattr(sweep_run.importlib.util, "find_spec",
                        lambda name: None if name == "ray" else real(name))
    assert sweep_run.main(["sweep.launcher=ray", f"sweep.output_dir={tmp_path}"]) == 2
    assert "pip install -e .[ray]" in capsys.readouterr().err and launches == []


def test_a_good_sweep_launches_one_multirun_per_block_then_the_bench(monkeypatch, tmp_path, capsys):
    """The child commands, with a fake launcher that writes what the jobs would (no rollouts)."""
    import json

    from fixtures.sweep_fixtures import accel, successes, write_eval_info

    calls = []

    def fake_launch(cmd):
        calls.append(cmd)
        if cmd[3] == "eval":
            sweep_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("hydra.sweep.dir="))
            pruned = any(a.startswith("accel.keep_ratio=") for a in cmd)
            points = [("vla_pruner", 0.25), ("fastv", 0.25)] if pruned else [("none", None)]
            for j, (name, keep) in enumerate(points):
                write_eval_info(tmp_path / sweep_dir / str(j), accel(name, keep), successes(5))
        else:
            run_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("hydra.run.dir="))
            (tmp_path / run_dir).mkdir(parents=True)
            (tmp_path / run_dir / "bench.json").write_text(json.dumps({"results": [
                {"name": "none", "method": "none", "keep_ratio": None, "speedup": 1.0,
                 "latency_ms": {"total": {"p50": 200.0, "mean": 200.0}}},
                {"name": "fastv@0.25", "method": "fastv", "keep_ratio": 0.25, "speedup": 1.8,
                 "latency_ms": {"total": {"p50": 111.0, "mean": 111.0}}}]}))
        return 0

    monkeypatch.setattr(sweep_run, "launch", fake_launch)
    monkeypatch.chdir(tmp_path)
    rc = sweep_run.main(["sweep.launcher=joblib", "sweep.n_jobs=2", "sweep.methods=[vla_pruner,fastv]",
                         "env.task_ids=[0]", "sweep.output_dir=out",
                         "bench.rounds=3",
                         "policy=openvla_tiny", f"policy.path={tmp_path}"])
    assert rc == 0, capsys.readouterr()
    assert [c[3] for c in calls] == ["eval", "eval", "bench"]
    unpruned, pruned, bench = calls
    assert unpruned[4] == "-m" and "accel=none" in unpruned and "hydra/launcher=joblib" in unpruned
    assert "hydra.launcher.n_jobs=2" in unpruned and "hydra.sweep.dir=out/unpruned" in unpruned
    assert "accel=vla_pruner,fastv" in pruned and "accel.keep_ratio=0.25" in pruned
    # the preset's overrides, then the command line's (which replaced the preset's policy)
    i = pruned.index("env=goal")
    assert pruned[5:i] == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert pruned[i:i + 5] == ["env=goal", "eval.n_episodes=2", "env.task_ids=[0]",
                               "policy=openvla_tiny", f"policy.path={tmp_path}"]
    assert "accel.prune_layer=2" in pruned and "bench.prune_layer=2" in bench  # main.yaml's K
    assert "bench.methods=[vla_pruner,fastv]" in bench and "bench.keep_ratios=[0.25]" in bench
    assert "bench.skip_layers=[]" in bench and "policy=openvla_tiny" in bench
    assert not any(a.startswith("eval.") for a in bench[4:]) and "bench.rounds=3" in bench
    assert not any(a.startswith("bench.") for a in unpruned + pruned)
    out = capsys.readouterr().out
    assert "fastv@0.25" in out and "1.80x" in out
    assert (tmp_path / "out" / "bench.json").exists() and (tmp_path / "out" / "success_vs_hz.png").exists()


def test_jobs_that_did_not_finish_fail_the_sweep(monkeypatch, tmp_path, capsys, launches):
    assert sweep_run.main([f"sweep.output_dir={tmp_path}", "sweep.bench=false", f"policy.path={tmp_path}"]) == 1
    assert len(launches) == 2 and "no eval job finished" in capsys.readouterr().out


def test_sweep_point_overrides():
    assert SweepPoint("fastv", 0.125, (1, 2)).overrides() == [
        "accel=fastv", "accel.keep_ratio=0.125", "accel.skip_layers=[1,2]"]
    assert SweepPoint("none", None).overrides() == ["accel=none", "accel.skip_layers=[]"]


def test_help_names_the_commands(capsys):
    assert sweep_run.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "vla-accel sweep aggregate DIR" in out and "hydra/launcher=<basic|joblib>" in out
