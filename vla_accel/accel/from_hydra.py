"""The `accel` Hydra group of a command's config (eval, serve, sweep jobs) as an AccelConfig."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def accel_config(cfg: DictConfig):
    """The `accel` group as an AccelConfig, or None when the group is absent or every part is off
    (imported lazily: the accelerator pulls in torch, which the scripted expert does not need)."""
    if cfg.get("accel") is None or cfg.accel.get("name") == "none":
        return None  # skip the torch import a parse would cost (~2 s) for the plain preset
    from vla_accel.accel.config import AccelConfig

    config = AccelConfig.from_dict(OmegaConf.to_container(cfg.accel, resolve=True))
    return None if config.is_off else config
