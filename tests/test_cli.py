import json
import os
import shutil
import subprocess
import sys

import pytest
from fixtures.fakes import N_TASKS, needs_real_tabletop

from vla_accel import cli
from vla_accel.cli import SUBCOMMANDS, Subcommand, config_groups, main
from vla_accel.data.hdf5_io import load_demos


def _console_script() -> list[str]:
    exe = shutil.which("vla-accel", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "vla_accel.cli"]


def _run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*_console_script(), *args], capture_output=True, text=True, timeout=120, **kw)


def test_help_lists_subcommands_and_config_groups():
    proc = _run("--help")
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert f"  {name} " in proc.stdout
    groups = {line.split()[0]: line for line in proc.stdout.split("config groups")[1].splitlines()[1:]
              if line.startswith("  ") and not line.startswith("  vla-accel")}
    assert all(s in groups["env"] for s in ("goal", "long", "object", "spatial"))
    assert "expert" in groups["policy"] and "quick" in groups["eval"]


def test_no_arguments_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "subcommands:" in capsys.readouterr().out


def test_unknown_subcommand_suggests_and_exits_2():
    proc = _run("evl")
    assert proc.returncode == 2
    assert "unknown subcommand 'evl'. Did you mean 'eval'?" in proc.stderr


def test_subcommand_help_is_hydras():
    proc = _run("eval", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "== Configuration groups ==" in proc.stdout
    env_line = next(line for line in proc.stdout.splitlines() if line.startswith("env: "))
    assert all(s in env_line for s in ("goal", "long", "object", "spatial"))
    assert "n_episodes: 10" in proc.stdout


def test_config_groups_are_read_from_the_installed_package():
    groups = config_groups()
    assert {"goal", "long", "object", "spatial"} <= set(groups["env"])
    assert "expert" in groups["policy"] and "default" in groups["eval"] and "default" in groups["collect"]


def test_mujoco_gl_defaults_to_egl_but_is_not_forced(monkeypatch, capsys):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    main(["--help"])
    assert os.environ["MUJOCO_GL"] == "egl"
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    main(["--help"])
    assert os.environ["MUJOCO_GL"] == "osmesa"


_ECHO_ARGS: list = []


def _echo_main(argv):
    _ECHO_ARGS.append(argv)
    return 0


def test_a_subcommand_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(SUBCOMMANDS, "echo", Subcommand(f"{__name__}:_echo_main", "test subcommand"))
    _ECHO_ARGS.clear()
    assert main(["echo", "a", "b=1"]) == 0
    assert _ECHO_ARGS == [["a", "b=1"]]
    assert "  echo " in cli.usage()


def test_eval_runs_as_a_hydra_app_into_hydra_run_dir(fake_envs, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["eval", f"hydra.run.dir={run_dir}", "eval=quick", "env=goal", "policy=expert", "eval.progress=false",
                 "env.image_size=16"]) == 0
    info = json.loads((run_dir / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 2 * N_TASKS
    assert info["config"]["env"]["suite"] == "goal"
    assert (run_dir / ".hydra" / "config.yaml").exists()  # Hydra's own record of the run
    assert (run_dir / "eval_episodes.jsonl").exists()


def test_eval_multirun_gives_one_job_per_value(fake_envs, tmp_path):
    sweep = tmp_path / "sweep"
    assert main(["eval", "-m", f"hydra.sweep.dir={sweep}", "env=spatial,object", "policy=expert", "eval.n_episodes=1",
                 "env.task_ids=[0]", "eval.progress=false", "env.image_size=16"]) == 0
    suites = [json.loads((sweep / str(i) / "eval_info.json").read_text())["config"]["env"]["suite"] for i in (0, 1)]
    assert suites == ["spatial", "object"]


def test_a_bad_value_is_one_clear_line_and_exit_1(fake_envs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["eval", f"hydra.run.dir={tmp_path}", "policy=expert", "eval.n_episodes=0"])
    assert e.value.code == 1
    assert "vla-accel: error: eval.n_episodes must be a positive integer" in capsys.readouterr().err


def test_collect_refuses_to_overwrite_via_cli(fake_envs, tmp_path, capsys):
    (tmp_path / "demos_spatial.hdf5").write_bytes(b"keep me")
    with pytest.raises(SystemExit) as e:
        main(["collect", f"hydra.run.dir={tmp_path}", "collect.n_demos_per_task=1", "collect.progress=false"])
    assert e.value.code == 1
    assert "exists; pass collect.overwrite=true" in capsys.readouterr().err
    assert (tmp_path / "demos_spatial.hdf5").read_bytes() == b"keep me"


# ------------------------------------------------- the real tabletop env, through the installed command


@needs_real_tabletop
def test_real_env_collect_two_demos_then_eval_two_episodes(tmp_path):
    common = ["env=spatial", "env.task_ids=[0]", "env.image_size=64"]
    proc = _run("collect", *common, "collect.n_demos_per_task=2", "collect.progress=false",
                f"hydra.run.dir={tmp_path / 'collect'}")
    assert proc.returncode == 0, proc.stderr
    demos = load_demos(tmp_path / "collect" / "demos_spatial.hdf5")
    assert 1 <= len(demos) <= 2 and all(d.success for d in demos)
    assert demos[0].agentview_image.shape[1:] == (64, 64, 3)

    proc = _run("eval", *common, "policy=expert", "eval.n_episodes=2", "eval.progress=false",
                f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 2
    assert info["per_task"][0]["task_group"] == "spatial"
