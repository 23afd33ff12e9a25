"""Shared by soak_server.py and fault_server.py: a random-weight checkpoint of a tiny policy preset
(conf/policy/<name>.yaml's `model:`), and synthetic observations for it."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np


def write_random_checkpoint(preset: str, out: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A RANDOMLY INITIALISED model of the preset's architecture (serving mechanics, not skill)."""
    import torch
    from omegaconf import OmegaConf

    from vla_accel.policies.common.action_tokenizer import compute_norm_stats
    from vla_accel.policies.common.factory import policy_class

    cfg = OmegaConf.load(str(files("vla_accel.conf") / "policy" / f"{preset}.yaml"))
    cls = policy_class(cfg.type)
    config = cls.config_class.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    config.input_image_size = image_size
    config.norm_stats = {"soak": compute_norm_stats(np.random.default_rng(seed).uniform(-0.5, 0.5, (200, 7)))}
    torch.manual_seed(seed)
    cls.from_config(config).eval().save_pretrained(out)
    return out


def synthetic_obs(rng: np.random.Generator, image_size: int, instruction: str = "pick up the red block") -> dict:
    return {"agentview_image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
            "state": rng.normal(size=8).astype(np.float32), "instruction": instruction}
