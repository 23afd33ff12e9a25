"""Greedy max-min diversity over cosine distance (DivPrune's MMDP greedy; VLA-Pruner's filter step).

Speed (VLA-Pruner runs this every control step): the distance matrix is computed by exactly the same
operations as before the speed-up, so every distance keeps its bits and the kept indices are identical
(tests/accel/pruning/test_vla_pruner_fast.py checks them against a frozen copy of the old code). A (B, U, D)
Gram of only the union's rows would be 4x cheaper on a CPU, but a matmul of another shape may round
differently (it does for small shapes with MKL), and a changed last bit can flip a near tie; the saving
comes from the loop instead: no host syncs, and three device ops per pick instead of seven (the picked
and non-candidate tokens are kept at -inf in the running score rather than masked again each pick).
On a CPU everything after the distance matrix runs in numpy (``_greedy_numpy``): on the small shapes
VLA-Pruner runs every step, the selection is bound by per-op dispatch (~10 us per torch op, ~1 us per
numpy op), and the ops after the matmul (fill, masked min, argmax, minimum, sort) are exact in both.
"""

from __future__ import annotations

import numpy as np
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
    dist = cosine_distance(embeds)  # (B, N, N), a fresh tensor: its diagonal may be overwritten
    if dist.device.type == "cpu":
        return _greedy_numpy(dist, k, candidates)
    if check_values(embeds):  # a host sync: debug only off the CPU
        _check_available(N if candidates is None else int(candidates.sum(-1).min()), k)
    return _greedy_picks(dist, k, candidates).sort(dim=-1).values


def _check_available(available: int, k: int) -> None:
    if k > available:
        raise ValueError(f"greedy_max_min: k={k} exceeds the number of candidates in some row")


def _greedy_picks(dist: Tensor, k: int, candidates: Tensor | None) -> Tensor:
    """(B, k) positions in pick order. Overwrites ``dist``'s diagonal.

    The running score of a token is its minimum distance to the picked set, or -inf once it is picked or
    if it is no candidate. Setting dist[i, i] = -inf makes ``minimum(score, dist[pick])`` retire the pick
    in the same op; minimum and argmax are exact, so the scores equal the masked ones bit for bit."""
    B = dist.shape[0]
    inf = float("inf")
    diagonal = dist.diagonal(dim1=-2, dim2=-1)
    diagonal.fill_(inf)  # the nearest OTHER candidate
    if candidates is None:
        nearest = dist.amin(-1)
    else:
        not_cand = ~candidates
        nearest = dist.masked_fill(not_cand[:, None, :], inf).amin(-1).masked_fill(not_cand, -inf)
    first = nearest.argmax(-1)  # (B,)
    diagonal.fill_(-inf)
    rows = torch.arange(B, device=dist.device)
    score = dist[rows, first]  # (B, N): each token's distance to the picked set; the pick itself -inf
    if candidates is not None:
        score = score.masked_fill(not_cand, -inf)
    chosen = [first]
    for _ in range(k - 1):
        nxt = score.argmax(-1)
        chosen.append(nxt)
        score = torch.minimum(score, dist[rows, nxt])
    return torch.stack(chosen, dim=-1)


def _greedy_numpy(dist: Tensor, k: int, candidates: Tensor | None) -> Tensor:
    """``_greedy_picks`` + the sort, in numpy, for a CPU ``dist`` (overwritten): the same ops in the same
    order (the diagonal fill, the masked nearest-neighbour min, argmax's first maximum with NaN counted as
    the maximum, minimum propagating NaN), so the picks are the same."""
    d = dist.detach().numpy()
    B, N, _ = d.shape
    diag = np.arange(N)
    d[:, diag, diag] = np.inf  # the nearest OTHER candidate
    if candidates is None:
        _check_available(N, k)
        nearest = d.min(-1)
    else:
        not_cand = ~candidates.detach().numpy()
        _check_available(int((~not_cand).sum(-1).min()), k)
        nearest = np.where(not_cand[:, None, :], np.inf, d).min(-1)
        nearest[not_cand] = -np.inf
    first = nearest.argmax(-1)  # (B,)
    d[:, diag, diag] = -np.inf
    rows = np.arange(B)
    score = d[rows, first]  # (B, N), a copy (advanced indexing): each token's distance to the picked set
    if candidates is not None:
        score[not_cand] = -np.inf
    chosen = np.empty((B, k), dtype=np.int64)
    chosen[:, 0] = first
    for j in range(1, k):
        nxt = score.argmax(-1)
        chosen[:, j] = nxt
        np.minimum(score, d[rows, nxt], out=score)
    chosen.sort(axis=-1)
    return torch.from_numpy(chosen)
