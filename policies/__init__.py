"""Robot policies behind the LeRobot-style API (`reset`, `select_action`, `predict_action_chunk`).

`make_policy(cfg, env)` builds a policy from the `policy` config group by its `type` key. Adding a
policy is one entry in `POLICY_REGISTRY` (plus its `conf/policy/<name>.yaml`): the builder is named
by an import string so that `vla-accel` does not import torch models it is not asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from vla_accel.registry import lookup


@runtime_checkable
class Policy(Protocol):
    def reset(self) -> None: ...

    def select_action(self, obs: dict) -> np.ndarray: ...

    def predict_action_chunk(self, obs: dict) -> np.ndarray: ...


@dataclass(frozen=True)
class PolicySpec:
    """How to build one policy type.

    builder: "module:function" with signature `(cfg: DictConfig, env: gym.Env) -> Policy`.
    bound_to_env: True if the policy only works on the env it was built with (the scripted expert
        reads that env's simulator), so a rollout must build a new one per env. False for learned
        policies: the rollout builds them once and reuses them over all tasks (weights load once).
    """

    builder: str
    bound_to_env: bool = False
    help: str = ""

    def load_builder(self) -> Callable[..., Policy]:
        module_name, _, attr = self.builder.partition(":")
        return getattr(importlib.import_module(module_name), attr)


POLICY_REGISTRY: dict[str, PolicySpec] = {
    "expert": PolicySpec(
        "vla_accel.policies.expert:make_expert_policy",
        bound_to_env=True,
        help="the env's scripted expert (privileged simulator state)",
    ),
    "openvla": PolicySpec(
        "vla_accel.policies.common.factory:make_openvla_policy",
        help="OpenVLA-style VLA (7 autoregressive action tokens) from policy.path",
    ),
    "cogact": PolicySpec(
        "vla_accel.policies.common.factory:make_cogact_policy",
        help="CogACT-style VLA (cognition feature -> DiT diffusion head) from policy.path",
    ),
}


def _policy_cfg(cfg: Any) -> Mapping:
    # Accept the `policy` group node itself or a whole app config that holds one.
    if "type" not in cfg and "policy" in cfg:
        cfg = cfg["policy"]
    if "type" not in cfg:
        raise ValueError(
            f"policy config has no 'type' key; valid types: {', '.join(sorted(POLICY_REGISTRY))}"
        )
    return cfg


def policy_spec(cfg: Any) -> PolicySpec:
    """The registry entry for a policy config (ValueError with a did-you-mean on an unknown type)."""
    kind = _policy_cfg(cfg)["type"]
    return lookup(POLICY_REGISTRY, kind, "policy type", label="Valid types")


def make_policy(cfg: Any, env) -> Policy:
    """Build the policy that `cfg` (the `policy` group, or a config holding one) describes."""
    return policy_spec(cfg).load_builder()(_policy_cfg(cfg), env)


__all__ = ["POLICY_REGISTRY", "Policy", "PolicySpec", "make_policy", "policy_spec"]
