"""EfficientVLA's diffusion action-head cache: reuse the DiT blocks' attention and MLP outputs.

Within one denoising loop (the DDIM steps of one control step), step i recomputes every block's
self-attention and MLP output only when i mod N == 0 and otherwise reuses the output stored at the last
recomputation (the residual stream itself is still updated every step). N = 5 with 10 DDIM steps means
2 full evaluations per loop. The cache is cleared at the start of every loop, so nothing carries over
between control steps, episodes or policies.

It plugs into the hook a CogACT-style policy's DiT declares (`action_model.feature_cache`,
policies/cogact/dit.py): nothing of the policy is wrapped or patched, and removing it sets the hook back
to None.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vla_accel.policies.capabilities import require_dit_head


class DiTFeatureCache:
    """Counts the DiT calls of one denoising loop and serves stored sub-module outputs between refreshes
    (the `FeatureCache` protocol of policies/cogact/dit.py)."""

    def __init__(self, interval: int) -> None:
        if int(interval) != interval or interval < 1:
            raise ValueError(f"head cache interval must be an integer >= 1, got {interval}")
        self.interval = int(interval)
        self.step = 0  # DiT calls so far in the current loop
        self.full_steps = 0  # calls that recomputed everything (for tests and timing tables)
        self._store: dict[tuple[int, str], Tensor] = {}

    @property
    def refresh(self) -> bool:
        return self.step % self.interval == 0

    def start_loop(self) -> None:
        self.step = 0
        self._store.clear()

    def output(self, key: tuple[int, str], module: nn.Module, x: Tensor) -> Tensor:
        stored = self._store.get(key)
        if self.refresh or stored is None or stored.shape != x.shape:
            stored = module(x)
            self._store[key] = stored
        return stored

    def end_call(self) -> None:
        if self.refresh:
            self.full_steps += 1
        self.step += 1


def install_head_cache(policy: Any, interval: int) -> DiTFeatureCache:
    """Set a feature cache on the policy's DiT hook (it restarts at every denoising loop)."""
    dit = require_dit_head(policy, "the diffusion-head cache", fix="set head_cache_interval to 1")
    cache = DiTFeatureCache(interval)
    dit.feature_cache = cache
    return cache


def head_cache(policy: Any) -> DiTFeatureCache | None:
    """The feature cache on ``policy``'s DiT, or None."""
    dit = getattr(policy, "action_model", None)
    return getattr(dit, "feature_cache", None)


def remove_head_cache(policy: Any) -> None:
    dit = getattr(policy, "action_model", None)
    if dit is not None and hasattr(dit, "feature_cache"):
        dit.feature_cache = None
