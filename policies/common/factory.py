"""`make_policy` builders for the learned policies (`policy.type: openvla | cogact`).

The policy config names a checkpoint `path` (ours, or for openvla also the OpenVLA HF layout), the
`device`, the `dtype` (null: float32 on CPU, bfloat16 on CUDA) and the `unnorm_key`. CogACT's
inference options (n_action_steps, use_ensemble, ensemble_alpha, ensemble_horizon, cfg_scale,
ddim_steps, sampling_seed) set at the top level of the policy config (not null) override the
checkpoint's values; `model:` is only read when training from scratch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COGACT_RUNTIME = ("n_action_steps", "use_ensemble", "cfg_scale", "ddim_steps", "sampling_seed",
                  "ensemble_alpha", "ensemble_horizon")


POLICY_TYPES = ("openvla", "cogact")


def policy_class(kind: str):
    """The policy class of a learned policy type (imported on use: each pulls in its model code)."""
    if kind == "openvla":
        from vla_accel.policies.openvla.modeling_openvla import OpenVLAPolicy
        return OpenVLAPolicy
    if kind == "cogact":
        from vla_accel.policies.cogact.modeling_cogact import CogACTPolicy
        return CogACTPolicy
    raise ValueError(f"unknown policy type {kind!r}; trainable types: {POLICY_TYPES}")


def device_dtype(cfg: Mapping[str, Any]) -> tuple[str, torch.dtype]:
    """(device, dtype) of a policy config: dtype null is float32 on CPU, bfloat16 on CUDA."""
    device = str(cfg.get("device") or "cpu")
    name = cfg.get("dtype")
    if name is None:
        return device, torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {sorted(DTYPES)}")
    return device, DTYPES[name]


# The shipped checkpoints (checkpoints/ beside vla_accel/ in the repository): a relative policy.path
# that is not found from the working directory is looked up here, so that the presets work anywhere.
REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str | Path) -> Path:
    """`path` as given, or under REPO_ROOT when it is relative and only exists there."""
    path = Path(str(path))
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def _path(cfg: Mapping[str, Any], kind: str) -> str:
    """policy.path: a checkpoint directory, or a `vla-accel train` output_dir (its newest checkpoint)."""
    if not cfg.get("path"):
        raise ValueError(f"policy type {kind!r} needs policy.path: a checkpoint directory "
                         "(train one with `vla-accel train`)")
    path = resolve_path(cfg["path"])
    if (path / "config.json").is_file():
        return str(path)
    ckpts = sorted((path / "checkpoints").glob("step_*"))
    if ckpts and (ckpts[-1] / "config.json").is_file():
        return str(ckpts[-1])
    if not path.exists():
        raise FileNotFoundError(f"policy.path {path} does not exist (relative paths are tried from the working "
                                f"directory and from the repository root {REPO_ROOT}; the shipped "
                                "checkpoints/ come with a source checkout, not with a wheel)")
    raise FileNotFoundError(f"policy.path {path} holds no config.json and no checkpoints/step_* directory")


def make_openvla_policy(cfg: Mapping[str, Any], env=None):
    from vla_accel.policies.openvla.modeling_openvla import OpenVLAPolicy

    device, dtype = device_dtype(cfg)
    policy = OpenVLAPolicy.from_pretrained(_path(cfg, "openvla"), device=device, dtype=dtype,
                                           center_crop=cfg.get("center_crop"))
    policy.unnorm_key = cfg.get("unnorm_key")
    return policy


def make_cogact_policy(cfg: Mapping[str, Any], env=None):
    from vla_accel.policies.cogact.configuration_cogact import CogACTConfig
    from vla_accel.policies.cogact.ensemble import AdaptiveEnsembler
    from vla_accel.policies.cogact.modeling_cogact import CogACTPolicy

    device, dtype = device_dtype(cfg)
    # A released CogACT checkpoint needs the Llama-2 tokenizer / config it lacks (cogact_release.yaml).
    release = {k: cfg[k] for k in ("tokenizer_path", "llm_config", "dit_heads") if cfg.get(k) is not None}
    policy = CogACTPolicy.from_pretrained(_path(cfg, "cogact"), device=device, dtype=dtype, **release)
    policy.unnorm_key = cfg.get("unnorm_key")
    overrides = {k: cfg[k] for k in COGACT_RUNTIME if cfg.get(k) is not None}
    if overrides:
        merged = {**policy.config.to_dict(), **overrides}
        policy.config = CogACTConfig.from_dict(merged)  # validates the new values
        policy.ensembler = AdaptiveEnsembler(policy.config.ensemble_horizon, policy.config.ensemble_alpha)
        policy.reset()
    return policy
