"""Shared helpers for the VLA policy tests: tiny configs from conf/policy/*_tiny.yaml and a synthetic
HDF5 demonstration file in the layout of docs/interfaces.md."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import h5py
import numpy as np
from omegaconf import OmegaConf

INSTRUCTIONS = ["Pick up the red block", "Push the blue cube to the left"]


def policy_yaml(name: str):
    return OmegaConf.load(str(files("vla_accel.conf") / "policy" / f"{name}.yaml"))


def tiny_model_dict(name: str, **overrides) -> dict:
    d = OmegaConf.to_container(policy_yaml(name).model, resolve=True)
    d["input_image_size"] = 32
    d.update(overrides)
    return d


def demo_actions(t: int, task: int, rng: np.random.Generator) -> np.ndarray:
    """Actions that depend on the task (and so on the image colour and the instruction)."""
    a = np.zeros((t, 7), np.float32)
    direction = 1.0 if task == 0 else -1.0
    a[:, 0] = direction * np.linspace(0.2, 0.8, t)
    a[:, 1] = -direction * 0.3
    a[:, 2:6] = rng.normal(0.0, 0.05, (t, 4))
    a[:, 6] = np.where(np.arange(t) < t // 2, -1.0, 1.0)
    return a


def write_demos(path: Path, n_demos: int = 4, t: int = 12, size: int = 32, suite: str = "spatial",
                seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs.update(suite=suite, env_args=json.dumps({"image_size": size}), total=n_demos * t,
                          date="2026-11-22", command="synthetic test demos")
        for i in range(n_demos):
            task = i % 2
            g = data.create_group(f"demo_{i}")
            g.attrs.update(num_samples=t, instruction=INSTRUCTIONS[task], task=f"task{task}", task_id=task,
                           suite=suite, init_state_id=i, success=True, noise_std=0.0)
            img = rng.integers(0, 40, (t, size, size, 3), dtype=np.uint8)
            img[:, 8:24, 8:24, task] = 220  # a red or green square tells the tasks apart
            g.create_dataset("obs/agentview_image", data=img)
            g.create_dataset("obs/wrist_image", data=img[:, ::-1].copy())
            g.create_dataset("obs/state", data=rng.normal(size=(t, 8)).astype(np.float32))
            acts = demo_actions(t, task, rng)
            g.create_dataset("actions", data=acts)
            g.create_dataset("executed_actions", data=np.clip(acts + rng.normal(0, 0.01, acts.shape), -1, 1))
            g.create_dataset("rewards", data=np.r_[np.zeros(t - 1), 1.0].astype(np.float32))
            g.create_dataset("dones", data=np.r_[np.zeros(t - 1), 1].astype(np.uint8))
    return path


def random_obs(batch: int | None = None, size: int = 32, seed: int = 0, wrist: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if batch is None else (batch, size, size, 3)
    obs = {"agentview_image": rng.integers(0, 255, shape, dtype=np.uint8),
           "state": rng.normal(size=(8,) if batch is None else (batch, 8)).astype(np.float32)}
    if wrist:
        obs["wrist_image"] = rng.integers(0, 255, shape, dtype=np.uint8)
    if batch is None:
        obs["instruction"] = INSTRUCTIONS[0]
    else:
        obs["instruction"] = [INSTRUCTIONS[i % 2] + " now" * i for i in range(batch)]  # unequal lengths
    return obs
