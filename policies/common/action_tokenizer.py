"""OpenVLA's action discretisation and its per-dataset q01/q99 normalisation.

Bins: `bins = linspace(-1, 1, n_bins)` (n_bins edges -> n_bins - 1 centres). Encoding: a normalised
value x in [-1, 1] goes to d = digitize(x, bins) in 1..n_bins and token id `vocab_end - d`, i.e. the
last n_bins ids below `vocab_end` (OpenVLA: the tokenizer's vocab_size). Decoding, as OpenVLA's
`predict_action`: d = vocab_end - id, centre index clip(d - 1, 0, n_bins - 2), value bin_centres[index].

Normalisation ("BOUNDS_Q99"): x_norm = clip(2 (x - q01) / (q99 - q01) - 1, -1, 1) on the dims where
`mask` is true; masked-out dims (the gripper, already in [-1, 1]) pass through unchanged. Un-normalising
is the inverse affine map on the masked dims.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class ActionTokenizer:
    def __init__(self, vocab_end: int, n_bins: int = 256) -> None:
        if vocab_end < n_bins:
            raise ValueError(f"vocab_end {vocab_end} must be >= n_bins {n_bins}")
        self.vocab_end = vocab_end
        self.n_bins = n_bins
        self.bins = np.linspace(-1.0, 1.0, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def first_id(self) -> int:
        """Smallest action token id (the allowed range is [first_id, vocab_end))."""
        return self.vocab_end - self.n_bins

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (..., A) in [-1, 1] -> token ids (..., A) int64."""
        d = np.digitize(np.clip(actions, -1.0, 1.0), self.bins)
        return (self.vocab_end - d).astype(np.int64)

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids (..., A) -> normalised actions (..., A) at the bin centres."""
        d = self.vocab_end - np.asarray(token_ids, dtype=np.int64)
        return self.bin_centers[np.clip(d - 1, 0, self.bin_centers.shape[0] - 1)]


def action_stats(norm_stats: Mapping[str, Any], unnorm_key: str | None) -> dict:
    """The `action` statistics of one dataset, with a clear error naming the valid keys."""
    if not norm_stats:
        raise ValueError("this model has no norm_stats; it cannot un-normalise actions")
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise ValueError(
                f"the model was trained on several datasets; pass unnorm_key, one of {sorted(norm_stats)}"
            )
        unnorm_key = next(iter(norm_stats))
    if unnorm_key not in norm_stats and f"{unnorm_key}_no_noops" in norm_stats:
        unnorm_key = f"{unnorm_key}_no_noops"  # OpenVLA's LIBERO fine-tunes (its run_libero_eval does the same)
    if unnorm_key not in norm_stats:
        raise ValueError(f"unknown unnorm_key {unnorm_key!r}; valid keys: {sorted(norm_stats)}")
    return norm_stats[unnorm_key]["action"]


def _bounds(stats: Mapping[str, Any], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low = np.asarray(stats["q01"], dtype=np.float64)
    high = np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    if low.shape != (dim,):
        raise ValueError(f"norm stats have {low.shape[0]} action dims, actions have {dim}")
    return low, high, mask


def normalize_actions(actions: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    low, high, mask = _bounds(stats, actions.shape[-1])
    scaled = np.clip(2.0 * (actions - low) / np.maximum(high - low, 1e-8) - 1.0, -1.0, 1.0)
    return np.where(mask, scaled, actions).astype(np.float32)


def unnormalize_actions(actions: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    low, high, mask = _bounds(stats, actions.shape[-1])
    return np.where(mask, 0.5 * (actions + 1.0) * (high - low) + low, actions).astype(np.float32)


def compute_norm_stats(actions: np.ndarray, mask: list[bool] | None = None, n_trajectories: int = 0) -> dict:
    """OpenVLA-format statistics of an (N, A) action array: mean/std/min/max/q01/q99/mask."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or len(a) == 0:
        raise ValueError(f"need a non-empty (N, A) action array, got shape {a.shape}")
    if mask is None:  # OpenVLA: every dim but the last (the gripper) is normalised
        mask = [True] * (a.shape[1] - 1) + [False]
    return {
        "action": {
            "mean": a.mean(0).tolist(),
            "std": a.std(0).tolist(),
            "max": a.max(0).tolist(),
            "min": a.min(0).tolist(),
            "q01": np.quantile(a, 0.01, axis=0).tolist(),
            "q99": np.quantile(a, 0.99, axis=0).tolist(),
            "mask": [bool(m) for m in mask],
        },
        "num_transitions": int(len(a)),
        "num_trajectories": int(n_trajectories),
    }
