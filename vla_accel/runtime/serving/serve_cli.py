"""`vla-accel serve`: build the policy from the `policy` group, accelerate it with the `accel` group,
and serve it (vla_accel.runtime.serving.server) until interrupted. Prints one line with the bound address."""

from __future__ import annotations

import os
import sys

import numpy as np
from omegaconf import DictConfig, OmegaConf

from vla_accel.conf import validated
from vla_accel.runtime.serving.serve_config import TOKEN_ENV, ServeConfig, ServeSchema


def build_served_policy(cfg: DictConfig):
    """The policy of cfg.policy, accelerated by cfg.accel (when present and not 'none')."""
    from vla_accel.policies import make_policy, policy_spec

    spec = policy_spec(cfg.policy)
    if spec.bound_to_env:
        raise ValueError(f"policy type {cfg.policy.type!r} reads one simulator's privileged state and cannot "
                         "be served; serve a learned policy (policy=openvla_* or cogact_*)")
    from vla_accel.accel.from_hydra import accel_config

    accel = accel_config(cfg)
    policy = make_policy(cfg.policy, None)
    from vla_accel.accel.accelerate import accelerate

    return accelerate(policy, accel)  # accel None: the plain runner, plus the infer call style


def warm_up(policy) -> None:
    """One inference on a blank frame, so the first client does not pay for lazy initialisation."""
    from vla_accel.policies.call_styles import infer
    from vla_accel.runtime.episode_fork import fork_episode

    size = policy.config.input_image_size or 224
    obs = {f"{cam}_image": np.zeros((size, size, 3), np.uint8) for cam in policy.config.cameras}
    infer(fork_episode(policy), {**obs, "instruction": "warm up"})


def serve_settings(scfg: DictConfig) -> ServeConfig:
    """The checked settings; serve.auth_token from $VLA_ACCEL_AUTH_TOKEN when the config sets none."""
    token = os.environ.get(TOKEN_ENV)
    if scfg.get("auth_token") is None and token:
        scfg = OmegaConf.merge(scfg, {"auth_token": token})
    return validated(ServeSchema, scfg).server_config()


def run(cfg: DictConfig) -> None:
    from vla_accel.runtime.serving.server import PolicyServer

    scfg = cfg.serve
    config = serve_settings(scfg)  # checks the ranges (and the token off loopback) before the model loads
    if scfg.get("torch_threads"):
        import torch

        torch.set_num_threads(int(scfg.torch_threads))
    policy = build_served_policy(cfg)
    if scfg.get("warmup", True):
        warm_up(policy)
    server = PolicyServer(policy, config)

    def ready(port: int) -> None:
        accel = OmegaConf.to_container(cfg.accel) if cfg.get("accel") is not None else None
        print(f"vla-accel serve: listening on ws://{config.host}:{port} "
              f"(policy {server.metadata['policy_type']}, accel {accel and accel.get('name')}; GET /healthz"
              f"{'; token required' if config.auth_token else ''})", flush=True)
        if server.rest_port is not None:
            print(f"vla-accel serve: REST POST http://{config.host}:{server.rest_port}/act (OpenVLA's deploy.py "
                  "convention)", flush=True)

    server.serve_forever(on_ready=ready)
    print("vla-accel serve: stopped", file=sys.stderr)
