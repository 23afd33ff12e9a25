"""The call styles robot code already uses, offered by every VLA policy (accelerated or not).

- LeRobot: ``policy.reset()``, ``policy.select_action(obs) -> (7,)``, ``policy.predict_action_chunk(obs)
  -> (B, H, 7)`` -- the policies' own methods.
- OpenVLA: ``policy.predict_action(image, instruction, unnorm_key=...)`` -- the policies' own method.
- openpi: ``policy.infer(obs) -> {"actions": (H, 7) float32, "policy_timing": {"infer_ms", "<stage>_ms"}}``
  -- :func:`infer` here, also the VLA policies' own ``policy.infer`` method. When the policy's runner
  reports what it did (the accelerator's does), the answer also holds ``"accel_stats"``: prompt tokens,
  tokens kept after pruning, and the kept visual token indices (M~,) of this call (None before pruning
  starts, e.g. VLA-Pruner's warm-up).

``infer`` takes ONE observation as the env returns it (unbatched) and returns the whole chunk the
policy predicts for it (OpenVLA-style: H = 1; CogACT-style: H = chunk_size); it does not touch the
policy's select_action queue. Stage times come from ``policy.last_timing`` (vla_accel.measure.timing) when
the policy keeps one, and ``infer_ms`` is then its ``total`` (the timer's call time, one timing path);
a policy without a timer is timed here.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def infer(policy: Any, obs: dict) -> dict[str, Any]:
    """openpi's ``BasePolicy.infer``: one unbatched observation -> {"actions": (H, A), "policy_timing"}."""
    if not isinstance(obs, dict):
        raise ValueError(f"obs must be a dict of env observations, got {type(obs).__name__}")
    instruction = obs.get("instruction")
    if not isinstance(instruction, str):
        raise ValueError("infer takes one unbatched observation: 'instruction' must be a str "
                         "(use predict_action_chunk for a batch)")
    start = time.perf_counter()
    chunk = np.asarray(policy.predict_action_chunk(obs), dtype=np.float32)  # (1, H, A)
    infer_ms = (time.perf_counter() - start) * 1e3
    if chunk.ndim != 3 or chunk.shape[0] != 1:
        raise ValueError(f"predict_action_chunk returned shape {chunk.shape}, expected (1, H, A)")
    timing = {"infer_ms": infer_ms}
    stages = getattr(policy, "last_timing", None)
    if isinstance(stages, dict):
        timing.update({f"{k}_ms": float(v) for k, v in stages.items() if isinstance(v, (int, float))})
        timing["infer_ms"] = timing.get("total_ms", infer_ms)
    out = {"actions": chunk[0], "policy_timing": timing}
    stats = accel_stats(policy)
    if stats is not None:
        out["accel_stats"] = stats
    return out


def accel_stats(policy: Any) -> dict[str, Any] | None:
    """What the policy's runner did in its last LLM prefill (row 0), or None when it reports nothing."""
    report = getattr(getattr(policy, "runner", None), "call_stats", None)
    return report() if callable(report) else None
