"""CogACT's adaptive action ensemble.

Every control step a new chunk (H, A) is predicted. For the current step, the chunks predicted k steps
ago contribute their k-th action. Weights: w_i = exp(alpha * cos(a_now, a_i)) with a_now the newest
chunk's first action, normalised to sum 1; the action is the weighted sum. History per episode (reset).
"""

from __future__ import annotations

from collections import deque

import numpy as np


def ensemble_weights(current: np.ndarray, candidates: np.ndarray, alpha: float) -> np.ndarray:
    """current (A,), candidates (K, A) -> (K,) weights exp(alpha * cos_sim), summing to 1."""
    norms = np.linalg.norm(candidates, axis=1) * np.linalg.norm(current) + 1e-7
    cos = candidates @ current / norms
    w = np.exp(alpha * cos)
    return w / w.sum()


class AdaptiveEnsembler:
    def __init__(self, horizon: int, alpha: float = 0.1) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.alpha = alpha
        self.history: deque[np.ndarray] = deque(maxlen=horizon)

    def reset(self) -> None:
        self.history.clear()

    def update(self, chunk: np.ndarray) -> np.ndarray:
        """chunk (H, A), the newest prediction -> the ensembled action (A,) for this step."""
        self.history.append(np.asarray(chunk))
        n = len(self.history)
        # The chunk predicted (n - 1 - i) steps ago holds this step's action at index n - 1 - i.
        candidates = np.stack([c[n - 1 - i] for i, c in enumerate(self.history)])  # (n, A)
        weights = ensemble_weights(candidates[-1], candidates, self.alpha)
        return (weights[:, None] * candidates).sum(0).astype(np.float32)
