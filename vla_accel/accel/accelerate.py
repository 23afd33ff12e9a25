"""``accelerate(policy, config)``: make a VLA policy fast in place, keeping its API.

    policy = accelerate(policy, "vla_pruner", keep_ratio=0.25)     # a preset from conf/accel/ + overrides
    policy = accelerate(policy, AccelConfig(...))                  # or a config object / flat dict

It sets only the hooks the policy declares (policies/capabilities.py): the LLM runner (docs/interfaces.md,
"The LLM runner seam") becomes an :class:`~vla_accel.accel.runner.AcceleratedRunner` -- token pruning,
layer skipping, and VLA-Cache's token reuse, which gets each frame's pixels from the policy's image
encoder through the runner -- and, for a policy with a DiT action head, the DiT's feature-cache hook gets
EfficientVLA's head cache. The config is bound to the policy's language model here, so a bad pruning
layer or skip list fails now, not at the first control step; so does a ``keep_tokens`` larger than the
policy's visual-token count (``policy.config.num_visual_tokens``). ``policy.reset()``, ``select_action``,
``predict_action_chunk``, ``predict_action`` and ``infer`` work as before; ``policy.fork_episode()`` gives
a second episode on the same weights. The policy already calls the runner's ``reset()`` and
``end_step()``, which is where the accelerator's per-episode state lives. ``accelerate(policy, "none")``
(or an AccelConfig() with every part off) undoes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vla_accel.accel.config import AccelConfig, load_accel_config
from vla_accel.accel.head_cache import install_head_cache, remove_head_cache
from vla_accel.accel.runner import AcceleratedRunner
from vla_accel.policies.capabilities import require_dit_head, require_runner


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
    """Accelerate ``policy`` (an OpenVLA- or CogACT-style policy: see policies/capabilities.py)."""
    cfg = as_accel_config(config, **overrides)
    require_runner(policy, "accelerate()")
    runner = AcceleratedRunner(cfg)
    runner.plan(policy.language_model)  # validate against the model's layer count now
    num_visual = getattr(getattr(policy, "config", None), "num_visual_tokens", None)
    if cfg.pruning is not None and num_visual is not None:
        cfg.pruning.budget(int(num_visual))  # keep_tokens > M fails now, not at the first prefill
    _check_encoder_probe(policy, runner, cfg)
    if cfg.head_cache is not None:
        require_dit_head(policy, "the diffusion-head cache", fix="set head_cache_interval to 1")
    # every check passed: now change the policy
    remove_head_cache(policy)
    if cfg.head_cache is not None:
        install_head_cache(policy, cfg.head_cache.interval)
    policy.runner = runner
    policy.accel_config = cfg
    policy.reset()  # a new runner starts a new episode
    return policy


def _check_encoder_probe(policy: Any, runner: AcceleratedRunner, cfg: AccelConfig) -> None:
    """A method that reads the vision encoder's attention (FasterVLM's [CLS], HiPrune's layers) must find
    that encoder and those blocks in the policy: refused now, naming the policy's encoder."""
    probe = runner.encoder_attention_request()
    if probe is None:
        return
    encoders = getattr(getattr(policy, "config", None), "vision", None) or []
    if probe.encoder >= len(encoders):
        raise ValueError(f"{cfg.pruning.method} reads vision encoder {probe.encoder}, but {type(policy).__name__} "
                         f"has {len(encoders)} encoder(s) (config.vision)")  # fmt: skip
    try:
        probe.resolve(encoders[probe.encoder])
    except ValueError as err:
        raise ValueError(f"{cfg.pruning.method} cannot run on {type(policy).__name__}: its vision encoder "
                         f"config.vision[{probe.encoder}] cannot give what it reads ({err})") from None
