"""The schema of the `eval` section of `vla-accel eval` (conf/eval/*.yaml): its keys, types and defaults.

Hydra checks the types at compose; __post_init__ (run by ``validated(EvalSchema, cfg.eval)``) checks
what types cannot say. The timing keys are checked where they are used: control_hz by
eval.rollout_timing (it falls back to env.control_hz), latency_* by realtime.LatencyModel,
warmup_calls and hold_gripper by rollout.RolloutTiming.
"""

from dataclasses import dataclass, field
from typing import Optional

import vla_accel.accel.preset_config  # noqa: F401  (stores the schema of the accel group, which eval composes)
from vla_accel.conf import store_schema
from vla_accel.harness.cluster_config import RaySchema

LAUNCHERS = ("basic", "ray")  # where an eval's shards run: here, one after another | Ray tasks


@dataclass
class EvalSchema:
    n_episodes: int = 10  # episodes per task, over init_state_ids 0..n-1
    n_init_states: int = 50  # fixed init states per task; episode i uses init state i % n_init_states
    seed: int = 0  # episode i of every task resets with seed + i
    max_steps: Optional[int] = None  # null = the task's own horizon
    videos: bool = False
    max_videos: int = 10
    videos_per_task: int = 1
    fps: Optional[float] = None  # null = env.control_hz
    progress: bool = True
    resume: bool = False
    control_hz: Optional[float] = None  # null = env.control_hz
    warmup_calls: int = 2
    realtime: bool = False
    latency_model: str = "measured"  # measured | fixed | scaled
    latency_ms: Optional[float] = None
    latency_scale: Optional[float] = None
    hold_gripper: float = -1.0
    timing_table: bool = True
    shards: int = 1  # split the episodes into this many contiguous slices, run as separate jobs, merged
    launcher: str = "basic"  # basic: the shards run here, one after another | ray: as Ray tasks (eval.ray)
    ray: RaySchema = field(default_factory=RaySchema)

    def __post_init__(self) -> None:
        for key in ("n_episodes", "n_init_states"):
            if getattr(self, key) < 1:
                raise ValueError(f"eval.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"eval.max_steps must be null or a positive integer, got {self.max_steps!r}")
        if self.max_videos < 0 or self.videos_per_task < 0:
            raise ValueError("eval.max_videos and eval.videos_per_task must be >= 0")
        if self.shards < 1:
            raise ValueError(f"eval.shards must be a positive integer, got {self.shards!r}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"eval.launcher must be one of {list(LAUNCHERS)}, got {self.launcher!r}")
        if self.resume and (self.shards > 1 or self.launcher != "basic"):
            raise ValueError("eval.resume continues an unsharded run on this machine; drop eval.shards / "
                             "eval.launcher=ray, or eval.resume")


store_schema("eval", EvalSchema)
