"""EfficientVLA's diffusion action-head cache: reuse the DiT blocks' attention and MLP outputs.

Within one denoising loop (the DDIM steps of one control step), step i recomputes every block's
self-attention and MLP output only when i mod N == 0 and otherwise reuses the output stored at the last
recomputation (the residual stream itself is still updated every step). N = 5 with 10 DDIM steps means
2 full evaluations per loop. The cache is cleared at the start of every loop, so nothing carries over
between control steps, episodes or policies.

Installed on a CogACT-style policy (``action_model.blocks[i].attn`` / ``.mlp``, a ``sample_actions``
loop) by wrapping those modules' ``forward`` on the instance: the weights, state dict and class are
untouched, and :func:`remove_head_cache` restores the originals.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import Tensor, nn

ATTR = "_vla_accel_head_cache"


class DiTFeatureCache:
    """Counts the DiT calls of one denoising loop and serves stored sub-module outputs between refreshes."""

    def __init__(self, dit: nn.Module, interval: int) -> None:
        if int(interval) != interval or interval < 1:
            raise ValueError(f"head cache interval must be an integer >= 1, got {interval}")
        if not hasattr(dit, "blocks") or not all(hasattr(b, "attn") and hasattr(b, "mlp") for b in dit.blocks):
            raise ValueError("head cache needs a DiT whose `blocks` each have `attn` and `mlp` sub-modules")
        self.dit, self.interval = dit, int(interval)
        self.step = 0  # DiT calls so far in the current loop
        self.full_steps = 0  # calls that recomputed everything (for tests and timing tables)
        self._store: dict[int, Tensor] = {}
        self._wrapped: list[nn.Module] = []
        self._wrap(dit, self._dit_forward)
        for block in dit.blocks:
            for sub in (block.attn, block.mlp):
                self._wrap(sub, functools.partial(self._sub_forward, sub))

    def _wrap(self, module: nn.Module, new_forward) -> None:
        module.forward = functools.partial(new_forward, module.forward)  # instance attribute shadows the class's
        self._wrapped.append(module)

    @property
    def refresh(self) -> bool:
        return self.step % self.interval == 0

    def start_loop(self) -> None:
        self.step = 0
        self._store.clear()

    def _dit_forward(self, original, *args: Any, **kwargs: Any) -> Tensor:
        if self.refresh:
            self.full_steps += 1
        try:
            return original(*args, **kwargs)
        finally:
            self.step += 1

    def _sub_forward(self, module: nn.Module, original, x: Tensor) -> Tensor:
        key = id(module)
        stored = self._store.get(key)
        if self.refresh or stored is None or stored.shape != x.shape:
            stored = original(x)
            self._store[key] = stored
        return stored

    def remove(self) -> None:
        for module in self._wrapped:
            del module.forward  # back to the class's forward
        self._wrapped.clear()
        self._store.clear()


def install_head_cache(policy: Any, interval: int) -> DiTFeatureCache:
    """Put a feature cache on ``policy.action_model`` and restart it at every ``policy.sample_actions``."""
    if not hasattr(policy, "action_model") or not callable(getattr(policy, "sample_actions", None)):
        raise ValueError(
            f"the diffusion-head cache needs a policy with a DiT action head (CogACT-style `action_model` and "
            f"`sample_actions`); {type(policy).__name__} has none -- set head_cache_interval to 1"
        )
    remove_head_cache(policy)
    cache = DiTFeatureCache(policy.action_model, interval)
    original = policy.sample_actions

    @functools.wraps(original)
    def sample_actions(*args: Any, **kwargs: Any):
        cache.start_loop()
        return original(*args, **kwargs)

    policy.sample_actions = sample_actions
    setattr(policy, ATTR, cache)
    return cache


def remove_head_cache(policy: Any) -> None:
    cache = getattr(policy, ATTR, None)
    if cache is None:
        return
    cache.remove()
    del policy.sample_actions
    delattr(policy, ATTR)
