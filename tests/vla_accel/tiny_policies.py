"""Test helpers: the tiny OpenVLA-style and CogACT-style policies of conf/policy/*_tiny.yaml (4 LLM layers,
random weights) and synthetic observations."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import torch
from omegaconf import OmegaConf

from vla_accel.policies.common.action_tokenizer import compute_norm_stats


def model_dict(name: str, num_layers: int = 4) -> dict:
    d = OmegaConf.to_container(OmegaConf.load(str(files("vla_accel.conf") / "policy" / f"{name}.yaml")).model)
    d["input_image_size"] = 32
    d["llm"]["num_layers"] = num_layers  # room for a pruning layer and a later action layer
    d["norm_stats"] = {"spatial": compute_norm_stats(np.random.default_rng(1).uniform(-0.5, 0.5, (200, 7)))}
    return d


def obs(seed=0, batch=None) -> dict:
    rng = np.random.default_rng(seed)
    shape = (32, 32, 3) if batch is None else (batch, 32, 32, 3)
    o = {"agentview_image": rng.integers(0, 255, shape, dtype=np.uint8),
         "state": rng.normal(size=(8,) if batch is None else (batch, 8)).astype(np.float32)}  # fmt: skip
    o["instruction"] = "pick up the red block" if batch is None else ["pick up the red block", "open the drawer now"]
    return o


def tiny_openvla(num_layers: int = 4):
    from vla_accel.policies.openvla.configuration_openvla import OpenVLAConfig
    from vla_accel.policies.openvla.modeling_openvla import OpenVLAPolicy

    torch.manual_seed(0)
    return OpenVLAPolicy.from_config(OpenVLAConfig.from_dict(model_dict("openvla_tiny", num_layers))).eval()


def tiny_cogact(num_layers: int = 4):
    from vla_accel.policies.cogact.configuration_cogact import CogACTConfig
    from vla_accel.policies.cogact.modeling_cogact import CogACTPolicy

    torch.manual_seed(0)
    policy = CogACTPolicy.from_config(CogACTConfig.from_dict(model_dict("cogact_tiny", num_layers))).eval()
    with torch.no_grad():  # the DiT starts by predicting zero noise; give it an output so caching shows
        policy.action_model.final_proj.weight.normal_(0, 0.5)
    return policy
