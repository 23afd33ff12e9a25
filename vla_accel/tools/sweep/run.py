"""`vla-accel sweep`: plan, validate, run the eval jobs as Hydra multiruns, bench, aggregate.

    vla-accel sweep                                   # the `main` preset (conf/sweep/main.yaml)
    vla-accel sweep sweep=budgets env=goal policy=openvla_default policy.path=ckpt eval.n_episodes=20
    vla-accel sweep sweep.methods=[vla_pruner,fastv] sweep.keep_ratios=[0.5,0.25] sweep.launcher=joblib
    vla-accel sweep aggregate DIR [--bench DIR/bench.json]

Arguments `sweep=<preset>` and `sweep.<key>=...` configure the sweep (composed with Hydra's Compose API
from conf/sweep.yaml); `bench.<key>=...` go to the bench pass only; every other argument is a Hydra
override handed unchanged to each eval job (and, less eval.* / hydra.*, to the bench), e.g. env=...,
policy=..., eval.n_episodes=..., hydra.launcher.n_jobs=....

On this machine the scale-out is Hydra's own: each Cartesian block of the sweep (see
SweepSpec.multirun_parts) is one `vla-accel eval -m accel=a,b accel.keep_ratio=... hydra/launcher=<basic|joblib>`
in a child process, so the launcher plugin (one process, or joblib's processes) schedules the jobs; this
module only composes the command lines and reads the results back. With sweep.launcher=ray every job
(every shard, with eval.shards=N) is a Ray task submitted through Ray's own API
(vla_accel.tools.sweep.ray_sweep, vla_accel.harness.dispatch), to a local instance or an existing
cluster (sweep.ray.*), and its results come back through Ray into the same directory layout; Hydra's
Ray launcher plugin is not used (README, "Sweeps": it cannot join an existing cluster). Nothing runs before the
whole spec -- every job's composed eval config -- has been checked. A child process rather than Hydra's
multirun in this process: Hydra keeps per-process global state (GlobalHydra, HydraConfig), and the
printed child command is exactly what a user can type. By hand, the same is

    vla-accel eval -m policy=... accel=none,vla_pruner,fastv accel.keep_ratio=0.5,0.25 hydra/launcher=joblib
    vla-accel bench policy=... bench.methods=[vla_pruner,fastv] bench.keep_ratios=[0.5,0.25]
    vla-accel sweep aggregate multirun/eval/<date>/<time> --bench outputs/bench/<date>/<time>/bench.json

(`none` then runs once per ratio; aggregate counts a configuration repeated on the same episodes once).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from vla_accel.conf import register_configs
from vla_accel.tools.sweep.spec import BASELINE, MultirunPart, SweepSpec

CONFIG_MODULE = "vla_accel.conf"
LAUNCHER_PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "pip install hydra-joblib-launcher"),
                    "ray": ("ray", "pip install -e .[ray] (or pip install 'vla-accel[ray]')")}


def split_args(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(sweep, eval, bench) overrides: `sweep=...`/`sweep.x=...` configure the sweep, `bench.x=...` go to
    the bench pass only, the rest to every eval job (and, less eval.* and hydra ones, to the bench)."""
    sweep, other, bench = [], [], []
    for a in args:
        if a in ("-m", "--multirun"):
            raise ValueError("`vla-accel sweep` runs its own multirun; drop -m")
        key = a.lstrip("+~").split("=", 1)[0]
        if key == "sweep" or key.startswith("sweep."):
            sweep.append(a)
        else:
            (bench if key.startswith("bench.") else other).append(a)
    return sweep, other, bench


def hydra_error(e: Exception) -> str:
    """Hydra's composition error with the first line of its cause: "Error merging override sweep.n_jobs=true
    (Value 'True' of type 'bool' could not be converted to Integer)", as Hydra itself prints both."""
    cause = str(e.__cause__ or "").strip()
    return f"{e} ({cause.splitlines()[0]})" if cause else str(e)


def compose_sweep(sweep_args: list[str]) -> tuple[SweepSpec, str | None]:
    """(the SweepSpec of conf/sweep.yaml + overrides, sweep.output_dir); ValueError on any bad value."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    register_configs()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = compose(config_name="sweep", overrides=sweep_args)
    except HydraException as e:
        raise ValueError(f"sweep config: {hydra_error(e)}") from e
    node = OmegaConf.to_container(cfg.sweep, resolve=True)
    output_dir = node.pop("output_dir", None)
    return SweepSpec.from_config(node), output_dir


def merge_overrides(preset: tuple[str, ...] | list[str], cli: list[str]) -> list[str]:
    """The preset's overrides, then the command line's (a key given on both: the command line wins)."""
    def key(o: str) -> str:
        return o.lstrip("+~").split("=", 1)[0]

    cli_keys = {key(o) for o in cli}
    return [o for o in preset if key(o) not in cli_keys] + list(cli)


def preflight(spec: SweepSpec, eval_args: list[str]) -> dict:
    """Compose and check every job's eval config before any job starts: config groups and values
    (Hydra), the suite and task ids, the eval settings, the policy type, each accel config.
    Returns {point: its composed eval config}."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    from vla_accel.accel.from_hydra import accel_config
    from vla_accel.harness import eval as ev
    from vla_accel.policies import policy_spec
    from vla_accel.policies.common.factory import REPO_ROOT, resolve_path

    job_args = [a for a in eval_args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    register_configs()
    cfgs = {}
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        for point in spec.points():
            try:
                layer = spec.prune_layer_overrides("accel") if point.keep_ratio is not None else ()
                cfg = compose(config_name="eval", overrides=[*job_args, *point.overrides(), *layer])
            except HydraException as e:
                raise ValueError(f"eval config of {point.label!r}: {hydra_error(e)}") from e
            ev._check_eval_cfg(cfg.eval)  # what `vla-accel eval` itself checks first
            ev.rollout_timing(cfg)
            ev.plan_episodes(cfg)  # unknown suite or task id -> ValueError listing the valid ones
            kind = policy_spec(cfg.policy)
            accel = accel_config(cfg)
            if accel is not None and kind.bound_to_env:
                raise ValueError(f"{point.label!r}: policy type {cfg.policy.type!r} has no LLM to accelerate; "
                                 "sweep a learned policy (policy=openvla_* / cogact_* with policy.path=...)")
            path = cfg.policy.get("path", "")
            if path is None and accel is not None:
                raise ValueError(f"policy {cfg.policy.type!r} needs policy.path (a checkpoint directory: "
                                 "vla-accel sweep policy.path=DIR; train one with `vla-accel train`)")
            if path and not resolve_path(path).exists():
                raise ValueError(f"policy.path={path!r} does not exist (tried from the working directory and "
                                 f"from the repository root {REPO_ROOT})")
            cfgs[point] = cfg
    return cfgs


def check_launcher(launcher: str) -> None:
    if launcher in LAUNCHER_PLUGINS:
        module, hint = LAUNCHER_PLUGINS[launcher]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"sweep.launcher={launcher} needs Hydra's {launcher} launcher plugin: {hint}")


def launcher_overrides(spec: SweepSpec) -> list[str]:
    out = [f"hydra/launcher={spec.launcher}"]
    if spec.launcher == "joblib" and spec.n_jobs is not None:
        out.append(f"hydra.launcher.n_jobs={spec.n_jobs}")
    return out


def eval_multirun_command(part: MultirunPart, spec: SweepSpec, eval_args: list[str], sweep_dir: Path) -> list[str]:
    """`python -m vla_accel.cli eval -m <launcher> <job overrides> <part's sweep> hydra.sweep.dir=...`
    (the launcher first, so that a hydra.launcher.* override of the user's comes later and wins)."""
    return [sys.executable, "-m", "vla_accel.cli", "eval", "-m", *launcher_overrides(spec), *eval_args,
            *part.sweep_overrides, f"hydra.sweep.dir={sweep_dir / part.name}", f"hydra.sweep.subdir={part.subdir}",
            "eval.progress=false"]


def bench_command(spec: SweepSpec, eval_args: list[str], sweep_dir: Path) -> list[str]:
    """`vla-accel bench` over the sweep's points in one process (its results in sweep_dir/bench/). It gets the eval jobs' env/policy overrides. The bench times layer
    skipping on the plain policy only, so pruned + skipped points keep their eval jobs' timing."""
    methods = ",".join(m for m in spec.methods if m != BASELINE)  # the bench always times the plain policy
    ratios = ",".join(map(repr, spec.keep_ratios))
    skips = ",".join(f"[{','.join(map(str, s))}]" for s in spec.skip_layers if s)
    job_args = [a for a in eval_args if not a.lstrip("+~").startswith(("eval.", "hydra.", "hydra/"))]
    return [sys.executable, "-m", "vla_accel.cli", "bench", *job_args, f"bench.methods=[{methods}]",
            f"bench.keep_ratios=[{ratios}]", f"bench.skip_layers=[{skips}]", "bench.progress=false",
            *spec.prune_layer_overrides("bench"), *spec.bench_overrides, f"hydra.run.dir={sweep_dir / 'bench'}"]


def _run_multiruns(spec: SweepSpec, eval_args: list[str], sweep_dir: Path, console: Console) -> None:
    for part in spec.multirun_parts():
        cmd = eval_multirun_command(part, spec, eval_args, sweep_dir)
        console.print(f"[bold]$ vla-accel eval -m[/bold] {' '.join(cmd[5:])}")
        launch(cmd)  # a failed job shows as a missing eval_info.json below, whatever the launcher returns


def launch(cmd: list[str]) -> int:
    """Run one child command (an eval multirun or the bench pass); its output streams through."""
    return subprocess.run(cmd, check=False).returncode


def _wide_console() -> Console:
    """Rich's console; when output is not a terminal (a log, a pipe) wide enough for the whole table."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def default_sweep_dir() -> Path:
    return Path("multirun") / "sweep" / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")


def run_sweep(spec: SweepSpec, sweep_dir: Path, console: Console | None = None) -> int:
    """Preflight, the eval multiruns, the bench pass, then the aggregate; 0 when every job finished.
    Every job gets spec.eval_overrides."""
    console = console or _wide_console()
    eval_args = list(spec.eval_overrides)
    check_launcher(spec.launcher)
    cfgs = preflight(spec, eval_args)
    points = spec.points()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"sweep: {len(points)} configurations -> {sweep_dir}\n  " + ", ".join(p.label for p in points))
    if spec.launcher == "ray":
        from vla_accel.tools.sweep.ray_sweep import run_ray_jobs

        run_ray_jobs(spec, cfgs, sweep_dir, console)  # a failed job: its eval.log, no eval_info.json
    else:
        _run_multiruns(spec, eval_args, sweep_dir, console)
    from vla_accel.tools.sweep.aggregate import BENCH_JSON, find_eval_infos

    found = find_eval_infos(sweep_dir)
    missing = [p for p in points if p not in found]
    if not found:
        console.print(f"[red]no eval job finished[/red]; see the eval.log files under {sweep_dir}")
        return 1
    if spec.bench and not missing:
        cmd = bench_command(spec, eval_args, sweep_dir)
        console.print(f"[bold]$ vla-accel bench[/bold] {' '.join(cmd[4:])}")
        produced = sweep_dir / "bench" / BENCH_JSON
        if launch(cmd) == 0 and produced.exists():
            shutil.copyfile(produced, sweep_dir / BENCH_JSON)
        else:
            console.print(f"[red]the bench pass failed[/red] (no {produced}); speedups NOT interleaved")
    report(sweep_dir, console=console)
    if missing:
        console.print(f"[red]{len(missing)} eval job(s) did not finish:[/red] {', '.join(p.label for p in missing)} "
                      f"(see their eval.log under {sweep_dir})")
        return 1
    return 0


def report(sweep_dir: Path, bench_path: Path | None = None, console: Console | None = None) -> list[Path]:
    """Aggregate sweep_dir: sweep.csv, sweep.md, the plots; print the side-by-side table."""
    from rich.table import Table

    from vla_accel.tools.plots import write_plots
    from vla_accel.tools.sweep.aggregate import TABLE_HEADER, aggregate, markdown_table, speed_note, table_cells, write_csv

    console = console or _wide_console()
    rows = aggregate(sweep_dir, bench_path)
    written = [write_csv(rows, sweep_dir / "sweep.csv")]
    (sweep_dir / "sweep.md").write_text(markdown_table(rows), encoding="utf-8")
    written.append(sweep_dir / "sweep.md")
    written += write_plots(rows, sweep_dir, title=f"sweep: {sweep_dir.name}")
    table = Table(title=f"sweep {sweep_dir}")
    for h in TABLE_HEADER:
        table.add_column(h, justify="left" if h == "config" else "right", no_wrap=h == "config")
    for r in rows:
        table.add_row(*table_cells(r))
    console.print(table)
    console.print(speed_note(rows))
    console.print("written: " + ", ".join(str(p) for p in written))
    return written



def main(argv: list[str]) -> int:
    """The `vla-accel sweep` subcommand (a plain one: its config is composed here, see the module doc)."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        if argv and argv[0] == "aggregate":
            return _aggregate_main(argv[1:])
        sweep_args, eval_args, bench_args = split_args(argv)
        spec, output_dir = compose_sweep(sweep_args)
        # the command line's overrides join the preset's, and are checked with them
        spec = dataclasses.replace(spec, eval_overrides=tuple(merge_overrides(spec.eval_overrides, eval_args)),
                                   bench_overrides=tuple(merge_overrides(spec.bench_overrides, bench_args)))
        sweep_dir = Path(output_dir) if output_dir else default_sweep_dir()
        return run_sweep(spec, sweep_dir)
    except ValueError as e:
        print(f"vla-accel sweep: error: {e}", file=sys.stderr)
        return 2


def _aggregate_main(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="vla-accel sweep aggregate",
                                     description="CSV, Markdown table and plots of a sweep / eval -m directory")
    parser.add_argument("dir", type=Path, help="the sweep (or `vla-accel eval -m`) output directory")
    parser.add_argument("--bench", type=Path, default=None, help="a bench.json (default: DIR/bench.json if present)")
    ns = parser.parse_args(args)
    if not ns.dir.is_dir():
        raise ValueError(f"{ns.dir} is not a directory")
    report(ns.dir, ns.bench)
    return 0
