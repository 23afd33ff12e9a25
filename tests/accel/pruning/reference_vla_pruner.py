"""Frozen copy of the implementation before the speed-up, the oracle the fast one must match.

Copied verbatim (bodies unchanged) from vla_accel/accel/pruning/diversity.py (``cosine_distance``,
``greedy_max_min``) and vla_accel/accel/pruning/vla_pruner.py (``VLAPruner.action_estimate`` and
``VLAPruner.select``, here as functions of the history / weights) before the selection was made faster.
Do not edit: tests/accel/pruning/test_vla_pruner_fast.py compares the fast code's kept indices against
these with ``torch.equal``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vla_accel.accel.checks import check_values


def cosine_distance(x: Tensor) -> Tensor:
    """Pairwise 1 - cos(x_i, x_j): (B, N, D) -> (B, N, N) float32."""
    x = F.normalize(x.float(), dim=-1)
    return 1.0 - x @ x.transpose(-1, -2)


def greedy_max_min(embeds: Tensor, k: int, candidates: Tensor | None = None) -> Tensor:
    """Pick k tokens per row that greedily maximise the minimum pairwise cosine distance.

    embeds:     (B, N, D) token embeddings
    candidates: (B, N) bool, the tokens allowed to be picked (default: all); every row needs >= k of them
    returns:    (B, k) long, sorted ascending

    First pick: the candidate whose nearest other candidate is farthest away (largest nearest-neighbour
    distance). Each next pick: the candidate whose minimum distance to the already-picked set is largest.
    Ties go to the lowest index (argmax's first maximum), so the result is deterministic.
    """
    B, N, _ = embeds.shape
    if candidates is None:
        candidates = torch.ones(B, N, dtype=torch.bool, device=embeds.device)
    if check_values(candidates) and k > int(candidates.sum(-1).min()):  # a host sync: CPU / debug only
        raise ValueError(f"greedy_max_min: k={k} exceeds the number of candidates in some row")
    dist = cosine_distance(embeds)  # (B, N, N)
    neg_inf = torch.tensor(float("-inf"), device=dist.device)
    pos_inf = torch.tensor(float("inf"), device=dist.device)
    pair_ok = candidates[:, :, None] & candidates[:, None, :] & ~torch.eye(N, dtype=torch.bool, device=dist.device)
    nearest = torch.where(pair_ok, dist, pos_inf).amin(-1)  # (B, N) distance to the nearest other candidate
    nearest = torch.where(candidates, nearest, neg_inf)
    first = nearest.argmax(-1)  # (B,)
    rows = torch.arange(B, device=dist.device)
    picked = torch.zeros(B, N, dtype=torch.bool, device=dist.device)
    picked[rows, first] = True
    chosen = [first]
    min_dist = dist[rows, first]  # (B, N): each token's distance to the picked set
    for _ in range(k - 1):
        score = torch.where(candidates & ~picked, min_dist, neg_inf)
        nxt = score.argmax(-1)
        picked[rows, nxt] = True
        chosen.append(nxt)
        min_dist = torch.minimum(min_dist, dist[rows, nxt])
    return torch.stack(chosen, dim=-1).sort(dim=-1).values


def action_estimate(history: list[Tensor], weights: list[float]) -> Tensor:
    """VLAPruner.action_estimate: S^_act (B, M), each row normalised to sum 1 (an all-zero row stays zero).
    history: the stored (B, M) steps, oldest first; weights: VLAPruner.temporal_weights()."""
    est = sum(w * h for w, h in zip(weights, history))
    return est / est.sum(-1, keepdim=True).clamp_min(torch.finfo(est.dtype).tiny)


def select(visual_embeds: Tensor, visual_attention: Tensor, budget: int, action_estimate_: Tensor) -> Tensor:
    """VLAPruner.select with ``self.action_estimate()`` passed in as ``action_estimate_``."""
    semantic = visual_attention  # (B, M)
    action = action_estimate_.to(semantic.device)  # (B, M)
    union = torch.zeros_like(semantic, dtype=torch.bool)
    union.scatter_(1, semantic.topk(budget, dim=-1).indices, True)
    union.scatter_(1, action.topk(budget, dim=-1).indices, True)
    return greedy_max_min(visual_embeds, budget, candidates=union)
