"""``accelerate(policy, config)``: make a VLA policy fast in place, keeping its API.

    policy = accelerate(policy, "vla_pruner", keep_ratio=0.25)     # a preset from conf/accel/ + overrides
    policy = accelerate(policy, AccelConfig(...))                  # or a config object / flat dict

It swaps the policy's LLM runner (docs/interfaces.md, "The LLM runner seam") for an
:class:`~vla_accel.runner.AcceleratedRunner` -- token pruning and layer skipping -- and, for a policy
with a DiT action head, installs the diffusion-head feature cache; for VLA-Cache token reuse it makes the
policy's image encoder hand each frame's pixel patches to the runner. The config is bound to the policy's
language model here, so a bad pruning layer or skip list fails now, not at the first control step.
``policy.reset()``, ``select_action``, ``predict_action_chunk`` and ``predict_action`` work as before, and
the policy also gets openpi's ``policy.infer(obs) -> {"actions", "policy_timing"}`` (vla_accel.drop_in);
``vla_accel.episode_fork.fork_episode(policy)`` gives a second episode on the same weights. The policy already
calls the runner's ``reset()`` and ``end_step()``, which is where the accelerator's per-episode state
lives. ``accelerate(policy, "none")`` (or an AccelConfig() with every part off) undoes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vla_accel.accel_config import AccelConfig, load_accel_config
from vla_accel.drop_in import bind_infer
from vla_accel.head_cache import install_head_cache, remove_head_cache
from vla_accel.runner import AcceleratedRunner
from vla_accel.token_reuse import pixel_patches

_FRAME_TAP = "_vla_accel_frame_tap"


def as_accel_config(config: AccelConfig | Mapping[str, Any] | str | None, **overrides: Any) -> AccelConfig:
    if isinstance(config, str):
        return load_accel_config(config, **overrides)
    if overrides:
        raise ValueError("keyword overrides go with a preset name, e.g. accelerate(policy, 'fastv', keep_ratio=0.25)")
    if config is None:
        return AccelConfig()
    if isinstance(config, AccelConfig):
        return config
    if isinstance(config, Mapping):
        return AccelConfig.from_dict(config)
    raise ValueError(f"config must be an AccelConfig, a flat mapping or a preset name, got {type(config).__name__}")


def accelerate(policy: Any, config: AccelConfig | Mapping[str, Any] | str | None, **overrides: Any) -> Any:
    """Accelerate ``policy`` (an OpenVLA- or CogACT-style policy with ``runner`` and ``language_model``)."""
    cfg = as_accel_config(config, **overrides)
    if not hasattr(policy, "runner") or not hasattr(policy, "language_model"):
        raise ValueError(
            f"{type(policy).__name__} does not run its LLM through a runner (needs `runner` and `language_model`)"
        )
    runner = AcceleratedRunner(cfg)
    runner.plan(policy.language_model)  # validate against the model's layer count now
    if cfg.head_cache is not None and not hasattr(policy, "action_model"):
        raise ValueError(
            f"the diffusion-head cache needs a policy with a DiT action head (CogACT-style `action_model`); "
            f"{type(policy).__name__} has none -- set head_cache_interval to 1"
        )
    if cfg.reuse is not None and not callable(getattr(policy, "encode_images", None)):
        raise ValueError(
            f"vla_cache needs the policy's `encode_images(pixel_values)`; {type(policy).__name__} has none"
        )
    # every check passed: now change the policy
    remove_head_cache(policy)
    if cfg.head_cache is not None:
        install_head_cache(policy, cfg.head_cache.interval)
    _remove_frame_tap(policy)
    if cfg.reuse is not None:
        _install_frame_tap(policy, runner)
    policy.runner = runner
    policy.accel_config = cfg
    bind_infer(policy)  # openpi's call style next to LeRobot's and OpenVLA's
    policy.reset()  # a new runner starts a new episode
    return policy


def _install_frame_tap(policy: Any, runner: AcceleratedRunner) -> None:
    """VLA-Cache compares pixel patches between frames: pass them to the runner on every image encoding."""
    original = policy.encode_images
    num_visual = policy.config.num_visual_tokens

    def encode_images(pixel_values, *args, **kwargs):  # (B, n_cam, C, S, S) -> (B, M, D)
        runner.observe_frame(pixel_patches(pixel_values, num_visual))
        return original(pixel_values, *args, **kwargs)

    policy.encode_images = encode_images
    setattr(policy, _FRAME_TAP, True)


def _remove_frame_tap(policy: Any) -> None:
    if getattr(policy, _FRAME_TAP, False):
        del policy.encode_images
        delattr(policy, _FRAME_TAP)
