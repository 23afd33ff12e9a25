"""Interleaved timing of VLA-Pruner's selection before / after the speed-up (not a test; run by hand):

    OMP_NUM_THREADS=1 .venv/bin/python tests/accel/pruning/time_select.py [--reps 200]

Per shape (openvla_gpu-like M=256, budget 64, D=1024; small M=128, budget 32, D=128; B=1, 1 thread) each
variant runs once per round, in an order rotated every round; reported: median and p10-p90 ms per call.
Variants: ``ref`` the frozen old code; ``fast`` the shipped code (same full Gram, lean loop);
``union_gram`` the shipped loop on a Gram of only the union's rows (not shipped: not bit-identical, see
vla_accel/accel/pruning/diversity.py; the script counts how often its kept set differs).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from reference_vla_pruner import select as ref_select

from vla_accel.accel.pruning import SelectionContext, build_method
from vla_accel.accel.pruning.diversity import _greedy_picks, cosine_distance


def union_gram_select(emb, sem, act, budget):
    """Lever not shipped: gather the union (<= 2 * budget rows, duplicates masked) before the Gram."""
    idx = torch.cat([sem.topk(budget, dim=-1).indices, act.topk(budget, dim=-1).indices], -1).sort(-1).values
    valid = torch.ones_like(idx, dtype=torch.bool)
    valid[:, 1:] = idx[:, 1:] != idx[:, :-1]
    x = torch.nn.functional.normalize(emb.float(), dim=-1)
    x = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
    dist = 1.0 - x @ x.transpose(-1, -2)
    return idx.gather(1, _greedy_picks(dist, budget, valid)).sort(-1).values


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for M, budget, D in ((256, 64, 1024), (128, 32, 128)):
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(1, M, D, generator=g)
        sem, act = torch.rand(1, M, generator=g), torch.rand(1, M, generator=g)
        act = act / act.sum()
        m = build_method("vla_pruner", window=1)
        m.observe_step(act)
        ctx = SelectionContext(emb, sem, budget)
        est = m.action_estimate()
        variants = {"ref": lambda: ref_select(emb, sem, budget, est), "fast": lambda: m.select(ctx),
                    "union_gram": lambda: union_gram_select(emb, sem, est, budget)}
        times = {k: [] for k in variants}
        for r in range(args.reps + 5):
            names = list(variants)
            for j in range(len(names)):
                name = names[(j + r) % len(names)]
                t0 = time.perf_counter()
                variants[name]()
                if r >= 5:
                    times[name].append((time.perf_counter() - t0) * 1e3)
        differ = 0
        for s in range(100):
            g = torch.Generator().manual_seed(s + 1)
            e, se, a = torch.randn(1, M, D, generator=g), torch.rand(1, M, generator=g), torch.rand(1, M, generator=g)
            a = a / a.sum()
            differ += not torch.equal(union_gram_select(e, se, a, budget), ref_select(e, se, budget, a))
        print(f"M={M} budget={budget} D={D} B=1 threads=1 reps={args.reps}")
        for name, ts in times.items():
            q = np.percentile(ts, [10, 50, 90])
            print(f"  {name:11s} p50 {q[1]:.3f} ms  (p10 {q[0]:.3f}, p90 {q[2]:.3f})")
        print(f"  union_gram kept set != ref in {differ}/100 random inputs")


if __name__ == "__main__":
    main()
