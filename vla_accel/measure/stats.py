"""Success-rate statistics: the Wilson score interval and percent formatting.

Success rates from a few dozen episodes are noisy; every rate this project reports carries its 95%
Wilson interval (better behaved than the normal approximation near 0% and 100%, where VLA success
rates often sit).
"""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson_interval(n_success: int, n_trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion, as fractions in [0, 1].

    With p = k/n and z the two-sided normal quantile:
        centre    = (p + z^2 / 2n) / (1 + z^2 / n)
        half-width = z * sqrt(p(1-p)/n + z^2 / 4n^2) / (1 + z^2 / n)
    """
    if n_trials <= 0:
        raise ValueError(f"n_trials must be positive, got {n_trials}")
    if not 0 <= n_success <= n_trials:
        raise ValueError(f"n_success must be in [0, n_trials={n_trials}], got {n_success}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    n = float(n_trials)
    p = n_success / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    # At k = 0 (k = n) the bound is exactly 0 (1); computing it leaves float round-off (2.8e-17).
    lo = 0.0 if n_success == 0 else max(0.0, centre - half)
    hi = 1.0 if n_success == n_trials else min(1.0, centre + half)
    return lo, hi


def success_metrics(n_success: int, n_episodes: int) -> dict:
    """The metrics block of eval_info.json: pc_success and ci95 in percent, plus the counts."""
    lo, hi = wilson_interval(n_success, n_episodes)
    return {
        "pc_success": 100.0 * n_success / n_episodes,
        "n_episodes": int(n_episodes),
        "n_success": int(n_success),
        "ci95": [100.0 * lo, 100.0 * hi],
    }


def format_pc(pc: float, digits: int = 1) -> str:
    """A percentage (already in 0..100) as text, e.g. 87.5 -> '87.5%'."""
    return f"{pc:.{digits}f}%"


def format_rate(metrics: dict, digits: int = 1) -> str:
    """'80.0% [49.0, 94.3]' from a metrics block with pc_success and ci95."""
    lo, hi = metrics["ci95"]
    return f"{format_pc(metrics['pc_success'], digits)} [{lo:.{digits}f}, {hi:.{digits}f}]"
