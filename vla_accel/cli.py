"""The `vla-accel` command: `vla-accel <subcommand> [hydra overrides...]`.

Subcommands are one table (`SUBCOMMANDS`); adding one is one entry. A Hydra subcommand names its
primary config in `vla_accel.conf` and a task function `(cfg) -> None`; everything after the
subcommand goes to Hydra unchanged (overrides, `-m` multirun, `--help`, `hydra.run.dir=...`).
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable

from vla_accel.registry import did_you_mean

CONFIG_PACKAGE = "vla_accel.conf"
CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"


@dataclass(frozen=True)
class Subcommand:
    """target: "module:function". With config_name, the function is a Hydra task `(cfg) -> None`
    run as `hydra.main(config_name=...)`; without, it is a plain `main(argv: list[str]) -> int`."""

    target: str
    help: str
    config_name: str | None = None

    def load(self) -> Callable:
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


SUBCOMMANDS: dict[str, Subcommand] = {
    "collect": Subcommand("vla_accel.data.collect:run", "record scripted-expert demonstrations (HDF5)",
                          config_name="collect"),
    "eval": Subcommand("vla_accel.harness.eval:run", "roll a policy out over suites/tasks; write eval_info.json",
                       config_name="eval"),
    "bench": Subcommand("vla_accel.tools.bench:run", "latency of each acceleration config, interleaved; bench.json/md",
                        config_name="bench"),
    "train": Subcommand("vla_accel.policies.train:run", "train an OpenVLA/CogACT-style policy on HDF5 demos",
                        config_name="train"),
    "serve": Subcommand("vla_accel.runtime.serving.serve_cli:run",
                        "serve a policy over websocket+msgpack (openpi-style; GET /healthz)", config_name="serve"),
    "calibrate": Subcommand("vla_accel.tools.calibrate:run",
                            "rank a VLA's LLM layers by importance (EfficientVLA); write the layer-skip ranking JSON",
                            config_name="calibrate"),
    "sweep": Subcommand("vla_accel.tools.sweep.run:main",
                        "methods x keep ratios (+ baseline) as eval multiruns, bench, CSV/Markdown/Pareto plots; "
                        "`sweep aggregate DIR`"),
}


def config_groups() -> dict[str, list[str]]:
    """{group: [options]} read from the installed config package (groups nest as a/b)."""
    groups: dict[str, list[str]] = {}

    def walk(node, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir() and not child.name.startswith(("_", ".")):
                options = sorted(c.name[: -len(".yaml")] for c in child.iterdir()
                                 if c.is_file() and c.name.endswith(".yaml"))
                if options:
                    groups[prefix + child.name] = options
                walk(child, f"{prefix}{child.name}/")

    walk(importlib.resources.files(CONFIG_PACKAGE), "")
    return groups


def usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = ["usage: vla-accel <subcommand> [hydra overrides...] [-m] [--help]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {sub.help}" for name, sub in SUBCOMMANDS.items()]
    groups = config_groups()
    if groups:
        gw = max(len(g) for g in groups)
        lines += ["", "config groups (choose with group=option, e.g. env=goal policy=expert):"]
        lines += [f"  {g:<{gw}}  {', '.join(opts)}" for g, opts in groups.items()]
    lines += ["", "examples:",
              "  vla-accel eval policy=expert env=goal eval.n_episodes=5",
              "  vla-accel collect env=object collect.n_demos_per_task=20 collect.noise_std=0.1",
              "  vla-accel eval -m env=spatial,object          # one Hydra run per suite",
              "  vla-accel eval --help                         # Hydra's help for one subcommand"]
    return "\n".join(lines)


def _hydra_task(fn: Callable) -> Callable:
    """Wrap a task so a bad config value prints one clear line (not a traceback) and exits 1."""

    def task(cfg) -> None:
        try:
            fn(cfg)
        except ValueError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"vla-accel: error: {e}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
            sys.exit(1)

    # Hydra names the job after the task function's module (outputs, logs).
    task.__module__, task.__name__, task.__qualname__ = fn.__module__, fn.__name__, fn.__qualname__
    return task


def run_subcommand(name: str, args: list[str]) -> int:
    sub = SUBCOMMANDS[name]
    target = sub.load()
    if sub.config_name is None:
        return int(target(args) or 0)
    import hydra

    from vla_accel.conf import register_configs

    register_configs()  # the typed schemas the YAML files name (`/schema/...`) must be in the ConfigStore
    app = hydra.main(version_base=None, config_path=CONFIG_PATH, config_name=sub.config_name)(
        _hydra_task(target))
    # Hydra parses sys.argv[1:]; argv[0] shows in its usage line.
    saved = sys.argv
    sys.argv = [f"vla-accel {name}", *args]
    try:
        app()
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    # Headless rendering by default; must be set before mujoco is first imported.
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    # PyOpenGL announces at INFO that its optional C accelerator is absent: noise in every run's log.
    logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(usage())
        return 2
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help", "help"):
        print(usage())
        return 0
    if name == "--version":
        from vla_accel import __version__

        print(f"vla-accel {__version__}")
        return 0
    if name not in SUBCOMMANDS:
        print(f"vla-accel: unknown subcommand {name!r}.{did_you_mean(name, SUBCOMMANDS)}\n"
              f"valid subcommands: {', '.join(SUBCOMMANDS)} (see vla-accel --help)", file=sys.stderr)
        return 2
    return run_subcommand(name, rest)


if __name__ == "__main__":
    sys.exit(main())
