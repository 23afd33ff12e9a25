"""`vla-accel eval`: roll a policy out over suites x tasks x fixed init states; write eval_info.json.

Output (in Hydra's output dir): eval_episodes.jsonl (one line per finished episode, written as it
finishes, with its inference calls' timings), eval_info.json (interfaces.md's shape plus its `timing`
block, at the end), videos/eval_episode_{n}.mp4.

Timing keys (conf/eval/default.yaml): eval.control_hz (null = env.control_hz), eval.warmup_calls,
eval.realtime, eval.latency_model (measured | fixed | scaled) with eval.latency_ms / eval.latency_scale,
eval.hold_gripper; see vla_accel.harness.realtime for the real-time rule. With several suites eval_info.json
also holds `timing_per_group` ({suite: timing block}).

Scale-out: eval.shards=N splits the episodes into N jobs, eval.launcher=ray runs them as Ray tasks
(eval.ray.*); vla_accel.harness.dispatch runs them and merges them here (`report`) into the same files.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from tqdm import tqdm

from vla_accel import envs
from vla_accel.accel.from_hydra import accel_config
from vla_accel.conf import validated
from vla_accel.policies import make_policy, policy_spec
from vla_accel.harness.results import (EPISODE_LOG_ONLY_KEYS, EpisodeLog, build_eval_info, print_results, read_episode_log,
                               write_json_atomic)
from vla_accel.harness.eval_config import EvalSchema
from vla_accel.harness.realtime import LatencyModel
from vla_accel.harness.rollout import RolloutTiming, run_episode, warm_up
from vla_accel.harness.shards import select_shard
from vla_accel.measure.timing_report import timing_block, timing_table
from vla_accel.harness.task_selection import env_kwargs, resolve_suites, resolve_tasks
from vla_accel.harness.video import write_mp4

EPISODE_LOG = "eval_episodes.jsonl"
EVAL_INFO = "eval_info.json"


def _check_eval_cfg(ecfg) -> None:
    """The eval section's types (Hydra checked them at compose, unless built without the schema) and
    ranges (EvalSchema.__post_init__)."""
    validated(EvalSchema, ecfg)


def rollout_timing(cfg: DictConfig) -> RolloutTiming:
    """The loop's timing settings from the eval group (ValueError on a bad value)."""
    ecfg = cfg.eval
    hz = ecfg.get("control_hz")
    hz = cfg.env.control_hz if hz is None else hz
    if isinstance(hz, bool) or not isinstance(hz, (int, float)) or hz <= 0:
        raise ValueError(f"eval.control_hz must be null or a positive number, got {hz!r}")
    return RolloutTiming(control_hz=float(hz), realtime=bool(ecfg.get("realtime", False)),
                         latency_model=LatencyModel.from_eval_cfg(ecfg),
                         hold_gripper=float(ecfg.get("hold_gripper", -1.0)),
                         warmup_calls=ecfg.get("warmup_calls", 0))


def run_timing_block(timing: RolloutTiming, episodes: list[dict], warmup_calls: int) -> dict:
    return timing_block(episodes, control_hz=timing.control_hz, latency_model=timing.latency_model.kind,
                        latency_param=timing.latency_model.param, realtime=timing.realtime,
                        warmup_calls=warmup_calls)


@dataclass(frozen=True)
class PlannedEpisode:
    """One episode of the run, fixed before anything runs (so a resumed run re-plans the same)."""

    episode_ix: int
    suite: str
    task: object  # TaskInfo
    init_state_id: int
    seed: int
    film: bool

    def matches(self, record: dict) -> bool:
        return (record.get("suite"), record.get("task_id"), record.get("init_state_id"),
                record.get("seed")) == (self.suite, self.task.task_id, self.init_state_id, self.seed)


def plan_episodes(cfg: DictConfig) -> list[list[PlannedEpisode]]:
    """Episodes grouped by task, numbered in run order. Episode i of every task starts from init
    state i % n_init_states with seed eval.seed + i; the first videos_per_task episodes of each task
    are filmed, up to max_videos in the whole run."""
    ecfg = cfg.eval
    groups, ix, n_films = [], 0, 0
    for suite in resolve_suites(cfg.env.suite):
        for task in resolve_tasks(suite, cfg.env.task_ids):
            group = []
            for i in range(ecfg.n_episodes):
                film = bool(ecfg.videos) and i < ecfg.videos_per_task and n_films < ecfg.max_videos
                n_films += film
                group.append(PlannedEpisode(ix, suite, task, i % ecfg.n_init_states,
                                            int(ecfg.seed) + i, film))
                ix += 1
            groups.append(group)
    return groups


def _finished_episodes(log_path: Path, plan: list[list[PlannedEpisode]]) -> dict[int, dict]:
    """Episodes a previous (killed) run of the same plan finished, by episode_ix."""
    if not log_path.exists():
        return {}
    by_ix = {ep.episode_ix: ep for group in plan for ep in group}
    done = {}
    for record in read_episode_log(log_path):
        ep = by_ix.get(record.get("episode_ix"))
        if ep is None or not ep.matches(record):
            raise ValueError(f"{log_path} holds episodes of another run configuration (episode "
                             f"{record.get('episode_ix')}); resume only with the same env/eval settings")
        done[ep.episode_ix] = record
    return done


def select_unnorm_key(policy, suite: str, configured: str | None) -> None:
    """A policy trained on several suites un-normalises with the statistics of the suite it now runs.

    OpenVLA keys its dataset statistics by dataset (`unnorm_key`); our training keys them by suite. An
    explicit `policy.unnorm_key` always wins; policies without statistics (the expert) are left alone.
    """
    if configured is not None or not hasattr(policy, "unnorm_key"):
        return
    stats = getattr(getattr(policy, "config", None), "norm_stats", None) or {}
    if suite in stats:
        policy.unnorm_key = suite


@dataclass
class _EvalRun:
    """What one evaluation knows before its first episode (checked, planned), and what it has done."""

    cfg: DictConfig
    output_dir: Path
    spec: Any  # the policy's registry entry
    accel: Any  # AccelConfig or None
    timing: RolloutTiming
    plan: list[list[PlannedEpisode]]
    log_path: Path
    done: dict[int, dict]  # episodes read back from the log (eval.resume)
    records: dict[int, dict] = field(default_factory=dict)
    policy: Any = None
    n_warmup: int = 0  # untimed warm-up calls made in this process (once per policy built)

    def video_path(self, ep: PlannedEpisode) -> Path:
        return self.output_dir / "videos" / f"eval_episode_{ep.episode_ix}.mp4"


def evaluate(cfg: DictConfig, output_dir: str | Path, console: Console | None = None) -> dict:
    """Run the evaluation that `cfg` (the composed `eval` app config) describes; return eval_info.

    With eval.resume=true, episodes already in output_dir/eval_episodes.jsonl are kept, not re-run.
    With eval.shards > 1 or eval.launcher=ray the episodes run as shard jobs (vla_accel.harness.dispatch)
    and are merged here into the same eval_info.json.
    """
    console = console or Console()
    if is_dispatched(cfg.eval):
        from vla_accel.harness.dispatch import evaluate_dispatched

        return evaluate_dispatched(cfg, Path(output_dir), console)
    run = prepare(cfg, Path(output_dir), console)
    start = time.perf_counter()
    run_episodes(run)
    return report(run, time.perf_counter() - start, console)


def is_dispatched(ecfg) -> bool:
    """True when the eval runs as shard jobs rather than in this process's own loop."""
    return int(ecfg.get("shards", 1)) > 1 or ecfg.get("launcher", "basic") != "basic"


def run_episodes(run: _EvalRun) -> None:
    """Every planned episode not yet done, task by task, each appended to the episode log as it ends."""
    n_total = sum(len(g) for g in run.plan)
    bar = tqdm(total=n_total, initial=len(run.done), desc="eval", unit="ep", disable=not run.cfg.eval.progress,
               dynamic_ncols=True)
    with EpisodeLog(run.log_path) as log:
        try:
            for group in run.plan:
                _run_group(run, group, log, bar)
        finally:
            bar.close()


def prepare(cfg: DictConfig, output_dir: Path, console: Console, shard: tuple[int, int] | None = None) -> _EvalRun:
    """Check everything that can be checked before any env or policy is built; read a resumed log.
    shard=(k, n): plan only the k-th of n contiguous slices of the episodes (vla_accel.harness.shards)."""
    _check_eval_cfg(cfg.eval)
    output_dir.mkdir(parents=True, exist_ok=True)
    spec = policy_spec(cfg.policy)  # fail on an unknown policy type before building any env
    accel = accel_config(cfg)  # ... and on a bad accel config
    timing = rollout_timing(cfg)  # ... and on bad timing settings
    plan = plan_episodes(cfg)
    if shard is not None:
        plan = select_shard(plan, *shard)
    log_path = output_dir / EPISODE_LOG
    done = _finished_episodes(log_path, plan) if cfg.eval.get("resume", False) else {}
    if not done:
        log_path.unlink(missing_ok=True)  # a fresh run in a used directory starts a fresh log
    else:
        console.print(f"resuming: {len(done)} finished episodes read from {log_path}")
    return _EvalRun(cfg, output_dir, spec, accel, timing, plan, log_path, done, records=dict(done))


def _run_group(run: _EvalRun, group: list[PlannedEpisode], log: EpisodeLog, bar) -> None:
    """The episodes of one task still to run, in one env (and one policy, unless it is bound to the env)."""
    todo = [ep for ep in group if ep.episode_ix not in run.done]
    if not todo:
        return
    cfg, suite, task = run.cfg, group[0].suite, group[0].task
    env = envs.make_env(suite, task.task_id, **env_kwargs(cfg.env))
    try:
        if run.policy is None or run.spec.bound_to_env:
            run.policy = _build_policy(run, env)
            run.n_warmup += warm_up(env, run.policy, run.timing.warmup_calls,
                                    init_state_id=todo[0].init_state_id, seed=todo[0].seed)
        select_unnorm_key(run.policy, suite, cfg.policy.get("unnorm_key"))
        for ep in todo:
            rec = run_episode(env, run.policy, init_state_id=ep.init_state_id, seed=ep.seed,
                              max_steps=cfg.eval.max_steps, record_video=ep.film, timing=run.timing)
            if ep.film:
                write_mp4(run.video_path(ep), rec.frames, cfg.eval.fps or cfg.env.control_hz)
            record = _episode_record(ep, rec)
            log.append(record)
            run.records[ep.episode_ix] = record
            n_success = sum(r["success"] for r in run.records.values())
            bar.set_postfix_str(f"{suite}/{task.task_id} success {n_success}/{len(run.records)}")
            bar.update(1)
    finally:
        env.close()


def _build_policy(run: _EvalRun, env):
    policy = make_policy(run.cfg.policy, env)
    if run.accel is not None:
        from vla_accel.accel.accelerate import accelerate

        policy = accelerate(policy, run.accel)
    return policy


def _episode_record(ep: PlannedEpisode, rec) -> dict:
    """One line of eval_episodes.jsonl."""
    return {
        "episode_ix": ep.episode_ix, "suite": ep.suite, "task_id": ep.task.task_id,
        "task": ep.task.name, "init_state_id": ep.init_state_id, "seed": ep.seed,
        "success": rec.success, "sum_reward": rec.sum_reward,
        "max_reward": rec.max_reward, "n_steps": rec.n_steps,
        "n_calls": len(rec.calls), "n_stale_steps": rec.n_stale_steps,
        "n_hold_steps": rec.n_hold_steps, "loop_s": rec.loop_s,
        "calls": rec.calls,  # kept in the jsonl only (a resumed run re-reads them)
    }  # fmt: skip


def report(run: _EvalRun, eval_s: float, console: Console, extra: dict | None = None) -> dict:
    """eval_info.json (results, timing block, per-suite timing, then `extra`'s keys) and the printed tables."""
    cfg, plan = run.cfg, run.plan
    episodes = [run.records[ix] for ix in sorted(run.records)]
    per_episode = [{k: v for k, v in r.items() if k not in EPISODE_LOG_ONLY_KEYS} for r in episodes]
    tasks = [{"suite": g[0].suite, "task_id": g[0].task.task_id, "task": g[0].task.name,
              "instruction": g[0].task.instruction} for g in plan]
    video_paths = [str(run.video_path(ep)) for g in plan for ep in g
                   if ep.film and run.video_path(ep).exists()]
    info = build_eval_info(per_episode, tasks, eval_s=eval_s, video_paths=video_paths,
                           config=OmegaConf.to_container(cfg, resolve=True),
                           n_timed=len(run.records) - len(run.done))
    info["timing"] = run_timing_block(run.timing, episodes, run.n_warmup)
    suites = list(dict.fromkeys(r["suite"] for r in episodes))
    if len(suites) > 1:
        info["timing_per_group"] = {s: run_timing_block(run.timing, [r for r in episodes if r["suite"] == s],
                                                        run.n_warmup) for s in suites}
    info.update(extra or {})
    write_json_atomic(run.output_dir / EVAL_INFO, info)
    print_results(info, console, title=f"eval: policy={cfg.policy.type}")
    if cfg.eval.get("timing_table", True) and info["timing"]["n_calls"]:
        console.print(timing_table(info["timing"], title=f"timing: policy={cfg.policy.type}"
                                   + (f" accel={cfg.accel.name}" if cfg.get("accel") is not None else "")))
    console.print(f"results: {run.output_dir / EVAL_INFO}")
    return info


def run(cfg: DictConfig) -> None:
    """The Hydra task function of `vla-accel eval` (outputs go to Hydra's output dir)."""
    from hydra.core.hydra_config import HydraConfig

    console = Console()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        evaluate(cfg, output_dir, console)
    except KeyboardInterrupt:
        Console(stderr=True).print(
            f"[red]interrupted[/red]: finished episodes are kept in {output_dir / EPISODE_LOG}; "
            f"finish the run with the same overrides plus hydra.run.dir={output_dir} eval.resume=true")
        sys.exit(130)
