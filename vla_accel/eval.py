"""`vla-accel eval`: roll a policy out over suites x tasks x fixed init states; write eval_info.json.

Output (in Hydra's output dir): eval_episodes.jsonl (one line per finished episode, written as it
finishes), eval_info.json (interfaces.md's shape, at the end), videos/eval_episode_{n}.mp4.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from tqdm import tqdm

from vla_accel import envs
from vla_accel.policies import make_policy, policy_spec
from vla_accel.results import EpisodeLog, build_eval_info, print_results, write_json_atomic
from vla_accel.rollout import run_episode
from vla_accel.task_selection import env_kwargs, resolve_suites, resolve_tasks
from vla_accel.video import write_mp4

EPISODE_LOG = "eval_episodes.jsonl"
EVAL_INFO = "eval_info.json"


def _check_eval_cfg(ecfg) -> None:
    for key in ("n_episodes", "n_init_states"):
        if not isinstance(ecfg[key], int) or ecfg[key] < 1:
            raise ValueError(f"eval.{key} must be a positive integer, got {ecfg[key]!r}")
    if ecfg.max_steps is not None and (not isinstance(ecfg.max_steps, int) or ecfg.max_steps < 1):
        raise ValueError(f"eval.max_steps must be null or a positive integer, got {ecfg.max_steps!r}")
    if ecfg.max_videos < 0 or ecfg.videos_per_task < 0:
        raise ValueError("eval.max_videos and eval.videos_per_task must be >= 0")


def evaluate(cfg: DictConfig, output_dir: str | Path, console: Console | None = None) -> dict:
    """Run the evaluation that `cfg` (the composed `eval` app config) describes; return eval_info."""
    console = console or Console()
    ecfg = cfg.eval
    _check_eval_cfg(ecfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    spec = policy_spec(cfg.policy)  # fail on an unknown policy type before building any env
    plan = [(suite, task) for suite in resolve_suites(cfg.env.suite)
            for task in resolve_tasks(suite, cfg.env.task_ids)]
    fps = ecfg.fps or cfg.env.control_hz

    per_episode: list[dict] = []
    video_paths: list[str] = []
    policy = None
    start = time.perf_counter()
    bar = tqdm(total=len(plan) * ecfg.n_episodes, desc="eval", unit="ep", disable=not ecfg.progress,
               dynamic_ncols=True)
    with EpisodeLog(output_dir / EPISODE_LOG) as log:
        try:
            for suite, task in plan:
                env = envs.make_env(suite, task.task_id, **env_kwargs(cfg.env))
                try:
                    if policy is None or spec.bound_to_env:
                        policy = make_policy(cfg.policy, env)
                    videos_this_task = 0
                    for i in range(ecfg.n_episodes):
                        film = (ecfg.videos and videos_this_task < ecfg.videos_per_task
                                and len(video_paths) < ecfg.max_videos)
                        seed = int(ecfg.seed) + i
                        init_state_id = i % ecfg.n_init_states
                        rec = run_episode(env, policy, init_state_id=init_state_id, seed=seed,
                                          max_steps=ecfg.max_steps, record_video=film)
                        episode_ix = len(per_episode)
                        if film:
                            path = output_dir / "videos" / f"eval_episode_{episode_ix}.mp4"
                            video_paths.append(str(write_mp4(path, rec.frames, fps)))
                            videos_this_task += 1
                        record = {
                            "episode_ix": episode_ix, "suite": suite, "task_id": task.task_id,
                            "task": task.name, "init_state_id": init_state_id, "seed": seed,
                            "success": rec.success, "sum_reward": rec.sum_reward,
                            "max_reward": rec.max_reward, "n_steps": rec.n_steps,
                        }
                        log.append(record)
                        per_episode.append(record)
                        n_success = sum(e["success"] for e in per_episode)
                        bar.set_postfix_str(f"{suite}/{task.task_id} success {n_success}/{len(per_episode)}")
                        bar.update(1)
                finally:
                    env.close()
        finally:
            bar.close()
    eval_s = time.perf_counter() - start

    tasks = [{"suite": s, "task_id": t.task_id, "task": t.name, "instruction": t.instruction}
             for s, t in plan]
    info = build_eval_info(per_episode, tasks, eval_s=eval_s, video_paths=video_paths,
                           config=OmegaConf.to_container(cfg, resolve=True))
    write_json_atomic(output_dir / EVAL_INFO, info)
    print_results(info, console, title=f"eval: policy={cfg.policy.type}")
    console.print(f"results: {output_dir / EVAL_INFO}")
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
            f"[red]interrupted[/red]: finished episodes are kept in {output_dir / EPISODE_LOG}")
        sys.exit(130)
