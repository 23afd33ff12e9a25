"""Time a policy config on this machine: training steps/s and single-observation inference latency.

    python -m vla_accel.tools.train_speed --policy openvla_default --batch-size 16 --train-steps 8

Builds the model from `conf/policy/<policy>.yaml` with random weights (the speed does not depend on
them), trains on synthetic demos written to a temporary HDF5 file, and reports the median over the
timed steps after `--warmup` untimed ones (time.perf_counter; no CUDA synchronisation needed on CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from hydra import compose, initialize_config_module

from vla_accel.policies.data import DemoDataset
from vla_accel.policies.train import build_inputs, compute_loss, make_policy_for_training


def synthetic_demos(path: Path, size: int, n_demos: int = 4, t: int = 32) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["suite"] = "benchmark"
        for i in range(n_demos):
            g = data.create_group(f"demo_{i}")
            g.attrs.update(instruction="pick up the black bowl and place it on the plate", success=True)
            for cam in ("agentview_image", "wrist_image"):
                g.create_dataset(f"obs/{cam}", data=rng.integers(0, 255, (t, size, size, 3), dtype=np.uint8))
            g.create_dataset("actions", data=rng.uniform(-1, 1, (t, 7)).astype(np.float32))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="openvla_default")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--infer-steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        demos = synthetic_demos(Path(tmp) / "demos.hdf5", args.image_size)
        with initialize_config_module("vla_accel.conf", version_base=None):
            cfg = compose("train", overrides=[f"policy={args.policy}", f"data.paths=[{demos}]"])
        kind = cfg.policy.type
        cams = list(cfg.policy.model.get("cameras", ["agentview"]))
        dataset = DemoDataset([demos], cams, chunk_size=int(cfg.policy.model.get("chunk_size", 1)) if kind == "cogact" else 1)
        torch.manual_seed(0)
        policy = make_policy_for_training(cfg, dataset).to(args.device).train()
        n_params = sum(p.numel() for p in policy.parameters())
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        times = []
        for i in range(args.warmup + args.train_steps):
            idx = torch.randint(0, len(dataset), (args.batch_size,), generator=gen).numpy()
            t0 = time.perf_counter()
            batch = dataset.batch(idx)
            loss, _ = compute_loss(policy, kind, build_inputs(policy, batch, cfg.train.augment, gen, 0.9),
                                   batch, False, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        policy.eval()
        obs = {"agentview_image": dataset.images["agentview"][0], "instruction": dataset.instructions[0]}
        if "wrist" in cams:
            obs["wrist_image"] = dataset.images["wrist"][0]
        lat = []
        with torch.no_grad():
            for i in range(args.warmup + args.infer_steps):
                t0 = time.perf_counter()
                policy.predict_action_chunk(obs)
                if i >= args.warmup:
                    lat.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    print(json.dumps({
        "policy": args.policy, "params_M": round(n_params / 1e6, 2), "visual_tokens": policy.config.num_visual_tokens,
        "batch_size": args.batch_size, "train_step_s_median": round(step_s, 3),
        "train_steps_per_s": round(1 / step_s, 3), "train_steps_per_hour": int(3600 / step_s),
        "infer_latency_s_p50": round(statistics.median(lat), 4),
        "infer_latency_s_p90": round(sorted(lat)[int(0.9 * (len(lat) - 1))], 4),
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
