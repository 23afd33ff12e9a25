"""`vla-accel collect`: scripted-expert demonstrations with noise injection, saved as HDF5.

Each rollout starts from a training layout of the task (`collect.init_split=train`, the default:
layouts drawn from the task's distribution but disjoint from its 50 evaluation init states, so that an
evaluation never replays a scene the policy was trained on), or from the eval init states themselves. The executed action is
clip(expert + N(0, noise_std^2), -1, 1) so that the data shows recoveries from small errors (DART-style
noise injection); the stored label `actions` is the expert's clean action for the observed state.
"""

from __future__ import annotations

import logging
import shlex
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from vla_accel import envs
from vla_accel.conf import validated
from vla_accel.data.collect_config import CollectSchema
from vla_accel.data.hdf5_io import DemoWriter
from vla_accel.policies.expert import make_expert_policy
from vla_accel.measure.stats import format_rate, success_metrics
from vla_accel.harness.task_selection import env_kwargs, resolve_suites, resolve_tasks

log = logging.getLogger(__name__)


def record_rollout(env, expert, *, init_state_id: int, seed: int, noise_std: float,
                   rng: np.random.Generator, max_steps: int | None = None, split: str = "eval") -> dict:
    """One noisy expert rollout. Returns the arrays of the demo layout plus `success`.

    obs[t] is the observation the label actions[t] answers; executed_actions[t] is what was sent.
    """
    expert.reset()
    options = {"init_state_id": int(init_state_id)}
    if split != "eval":
        options["split"] = split  # only suites with a training split know this option
    obs, _ = env.reset(seed=seed, options=options)
    steps = {k: [] for k in ("agentview_image", "wrist_image", "state", "actions",
                             "executed_actions", "rewards", "dones")}
    success = False
    while max_steps is None or len(steps["actions"]) < max_steps:
        label = np.asarray(expert.select_action(obs), dtype=np.float32)  # (7,)
        noise = rng.normal(0.0, noise_std, size=label.shape) if noise_std > 0 else 0.0
        executed = np.clip(label + noise, -1.0, 1.0).astype(np.float32)
        steps["agentview_image"].append(obs["agentview_image"])
        steps["wrist_image"].append(obs["wrist_image"])
        steps["state"].append(obs["state"])
        obs, reward, terminated, truncated, info = env.step(executed)
        success = success or bool(info["is_success"])
        steps["actions"].append(label)
        steps["executed_actions"].append(executed)
        steps["rewards"].append(reward)
        steps["dones"].append(terminated or truncated)
        if terminated or truncated:
            break
    if steps["dones"]:
        steps["dones"][-1] = True  # the last stored step ends the demo, also when max_steps cut it
    arrays = {k: np.stack(v) if k in ("agentview_image", "wrist_image", "state", "actions",
                                       "executed_actions") else np.asarray(v)
              for k, v in steps.items()}
    arrays["rewards"] = arrays["rewards"].astype(np.float32)
    arrays["dones"] = arrays["dones"].astype(np.uint8)
    return {**arrays, "success": success}


class NoDemosError(RuntimeError):
    """The expert failed every rollout of a suite, so there is nothing to write."""


@dataclass
class TaskTally:
    suite: str
    task_id: int
    name: str
    instruction: str
    outcomes: list[bool] = field(default_factory=list)
    kept_lengths: list[int] = field(default_factory=list)


def output_path(template: str, suite: str, output_dir: Path) -> Path:
    """collect.output with {suite} filled in; relative paths are taken inside `output_dir`."""
    path = Path(str(template).format(suite=suite)).expanduser()
    return path if path.is_absolute() else output_dir / path


def collect_suite(cfg: DictConfig, suite: str, out: Path, command: str) -> list[TaskTally]:
    """Collect every selected task of one suite into `out` (atomically); returns per-task tallies."""
    ccfg = cfg.collect
    tasks = resolve_tasks(suite, cfg.env.task_ids)
    kwargs = env_kwargs(cfg.env)
    env_args = {"suite": suite, "task_ids": [t.task_id for t in tasks], **kwargs}
    split = ccfg.init_split
    if split == "train" and suite not in envs.TABLETOP_SUITES:
        log.warning("suite %r has no training split of init states: collecting on its eval init states", suite)
        split = "eval"
    tallies = []
    with DemoWriter(out, suite=suite, env_args=env_args, command=command,
                    overwrite=bool(ccfg.overwrite), compression=ccfg.compression,
                    compression_level=int(ccfg.compression_level)) as writer:
        bar = tqdm(total=len(tasks) * ccfg.n_demos_per_task, desc=f"collect {suite}", unit="demo",
                   disable=not ccfg.progress, dynamic_ncols=True)
        try:
            for task in tasks:
                tally = TaskTally(suite, task.task_id, task.name, task.instruction)
                tallies.append(tally)
                env = envs.make_env(suite, task.task_id, **kwargs)
                try:
                    expert = make_expert_policy(None, env)
                    for i in range(ccfg.n_demos_per_task):
                        # train split: layout i of an unbounded stream disjoint from the eval states
                        init_state_id = i if split == "train" else i % ccfg.n_init_states
                        rng = np.random.default_rng([int(ccfg.seed), zlib.crc32(suite.encode()),
                                                     task.task_id, i])
                        demo = record_rollout(env, expert, init_state_id=init_state_id,
                                              seed=int(ccfg.seed) + i, noise_std=float(ccfg.noise_std),
                                              rng=rng, max_steps=ccfg.max_steps, split=split)
                        success = demo.pop("success")
                        tally.outcomes.append(success)
                        if success or ccfg.keep_failures:
                            writer.add_demo(**demo, instruction=task.instruction, task=task.name,
                                            task_id=task.task_id, suite=suite,
                                            init_state_id=init_state_id, init_split=split,
                                            success=success,
                                            noise_std=float(ccfg.noise_std))
                            tally.kept_lengths.append(len(demo["actions"]))
                        done = [o for t in tallies for o in t.outcomes]
                        bar.set_postfix_str(f"task {task.task_id} expert success {sum(done)}/{len(done)}")
                        bar.update(1)
                finally:
                    env.close()
        finally:
            bar.close()
        if writer.n_demos == 0:
            raise NoDemosError(f"no demo kept for suite {suite!r}: the expert failed every rollout "
                               "(collect.keep_failures=true stores failed ones too)")
        writer.commit()
    return tallies


def summary_table(tallies: list[TaskTally], title: str) -> Table:
    table = Table(title=title)
    for col, justify in (("suite", "left"), ("task", "right"), ("instruction", "left"), ("expert", "right"),
                         ("success % [95% CI]", "right"), ("kept", "right"), ("mean T", "right")):
        table.add_column(col, justify=justify, no_wrap=col != "instruction")
    for t in tallies:
        n_ok = sum(t.outcomes)
        mean_len = f"{np.mean(t.kept_lengths):.1f}" if t.kept_lengths else "-"
        table.add_row(t.suite, str(t.task_id), t.instruction, f"{n_ok}/{len(t.outcomes)}",
                      format_rate(success_metrics(n_ok, len(t.outcomes))), str(len(t.kept_lengths)),
                      mean_len)
    return table


def collect(cfg: DictConfig, output_dir: str | Path, console: Console | None = None,
            command: str = "") -> list[Path]:
    """Collect demos for every suite `cfg.env.suite` names; one file per suite. Returns the paths."""
    console = console or Console()
    validated(CollectSchema, cfg.collect)  # the ranges (and the types, for a section built without the schema)
    output_dir = Path(output_dir)
    suites = resolve_suites(cfg.env.suite)
    outs = [output_path(cfg.collect.output, s, output_dir) for s in suites]
    if len(set(outs)) != len(outs):
        raise ValueError(f"collect.output {cfg.collect.output!r} gives the same file for several suites; "
                         "put {suite} in it")
    for out in outs:  # refuse before any work, not after an hour of collection
        if out.exists() and not cfg.collect.overwrite:
            raise FileExistsError(f"{out} exists; pass collect.overwrite=true to replace it")
    for suite, out in zip(suites, outs):
        tallies = collect_suite(cfg, suite, out, command)
        console.print(summary_table(tallies, f"collect {suite}: noise_std={cfg.collect.noise_std}"))
        console.print(f"wrote {sum(len(t.kept_lengths) for t in tallies)} demos to {out}")
    return outs


def run(cfg: DictConfig) -> None:
    """The Hydra task function of `vla-accel collect`."""
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    err = Console(stderr=True)
    command = shlex.join(["vla-accel", "collect", *sys.argv[1:]])
    try:
        collect(cfg, output_dir, Console(), command=command)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]: the partial file was deleted; existing files are untouched")
        sys.exit(130)
    except FileExistsError as e:
        err.print(f"[red]error[/red]: {e}")
        sys.exit(1)
    except OSError as e:
        err.print(f"[red]I/O error[/red] while collecting: {e}\n"
                  "the partial file was deleted; existing files are untouched")
        sys.exit(1)
    except NoDemosError as e:
        err.print(f"[red]error[/red]: {e}")
        sys.exit(1)


__all__ = ["collect", "collect_suite", "record_rollout", "run"]
