"""Deadline-aware pruning budget: choose the visual-token keep ratio online so inference fits the period.

    controller = KeepRatioController(BudgetConfig(target_hz=10, min_keep=0.125, max_keep=1.0))
    for each inference:
        set_keep_ratio(policy, controller.keep)      # between calls, never inside one
        latency_s = <time the call>
        controller.update(latency_s)
    controller.report()                              # {"keep_ratio": settled value, ...}

The model: inference latency is monotone (non-decreasing) in the keep ratio and close to affine over
the range a policy uses it (the pruned layers' cost is linear in the kept tokens; attention's quadratic
part is small at these lengths). The controller keeps a running mean latency per keep level it has
used (an exponential average over its last ``window`` calls, so slow drift is followed), fits
``latency = a + b * keep`` (b >= 0) to those means by least squares weighted by their call counts, and picks the LARGEST keep on a grid of ``step`` whose predicted
latency fits ``margin * period`` -- the fewest tokens dropped that meets the deadline.

Hysteresis (so measurement noise does not make it flap): it moves DOWN as soon as the mean measured
latency at the current keep exceeds the budget (``margin * period``), but moves UP only to a keep whose
predicted latency is below ``(1 - hysteresis) * budget``, and only after ``min_samples`` calls at the
current keep. While it has seen one keep only, it cannot fit a slope: it then assumes latency
proportional to keep to step down (a conservative guess: the true intercept is >= 0) and probes one grid
step up when there is headroom.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BudgetConfig:
    target_hz: float  # the control loop's inference rate to meet (one inference per period)
    min_keep: float = 0.125
    max_keep: float = 1.0
    margin: float = 0.9  # fraction of the period an inference may use (the rest: I/O, env, jitter)
    hysteresis: float = 0.05  # relative headroom required before raising the keep ratio
    step: float = 0.025  # keep-ratio grid
    window: int = 30  # calls used for the latency fit
    min_samples: int = 3  # calls at one keep before deciding to move up

    def __post_init__(self) -> None:
        if not self.target_hz > 0:
            raise ValueError(f"budget: target_hz must be > 0, got {self.target_hz}")
        if not 0.0 < self.min_keep <= self.max_keep <= 1.0:
            raise ValueError(f"budget: need 0 < min_keep <= max_keep <= 1, got [{self.min_keep}, {self.max_keep}]")
        if not 0.0 < self.margin <= 1.0:
            raise ValueError(f"budget: margin must be in (0, 1], got {self.margin}")
        if not 0.0 <= self.hysteresis < 1.0:
            raise ValueError(f"budget: hysteresis must be in [0, 1), got {self.hysteresis}")
        if not 0.0 < self.step <= 1.0:
            raise ValueError(f"budget: step must be in (0, 1], got {self.step}")
        if self.window < 2 or self.min_samples < 1:
            raise ValueError("budget: window must be >= 2 and min_samples >= 1")

    @property
    def budget_s(self) -> float:
        return self.margin / self.target_hz


class KeepRatioController:
    def __init__(self, config: BudgetConfig, initial_keep: float | None = None) -> None:
        self.config = config
        lo, hi, step = config.min_keep, config.max_keep, config.step
        n = int(math.floor((hi - lo) / step + 1e-9))
        self.levels = np.unique(np.round(np.append(lo + step * np.arange(n + 1), hi), 6))  # ascending
        self.keep = self._snap(hi if initial_keep is None else initial_keep)
        self._levels_seen: dict[float, list[float]] = {}  # keep -> [n calls (capped at window), mean latency_s]
        self._recent: deque[float] = deque(maxlen=config.window)  # latencies at the current keep since it was set
        self.n_updates = 0
        self.n_changes = 0
        self.last_change = 0  # update index of the last change
        self.n_over_budget = 0

    # ---------------------------------------------------------------------------------------- model
    def _snap(self, keep: float) -> float:
        """The largest grid level <= keep (at least min_keep)."""
        i = int(np.searchsorted(self.levels, keep + 1e-9, side="right")) - 1
        return float(self.levels[max(0, i)])

    def fit(self) -> tuple[float, float] | None:
        """(a, b) of latency_s = a + b * keep with b >= 0 over the levels seen, or None with one level."""
        if len(self._levels_seen) < 2:
            return None
        k = np.array(list(self._levels_seen))
        n, lat = np.array(list(self._levels_seen.values())).T
        b, a = np.polyfit(k, lat, 1, w=np.sqrt(n))  # polyfit weights multiply residuals: sqrt(count)
        if b < 0:  # monotone model: latency cannot fall when more tokens are kept
            b, a = 0.0, float(np.average(lat, weights=n))
        return float(a), float(b)

    def predict(self, keep: float) -> float | None:
        ab = self.fit()
        return None if ab is None else ab[0] + ab[1] * keep

    # ------------------------------------------------------------------------------------- control
    def update(self, latency_s: float, keep_used: float | None = None) -> float:
        """Record one inference's latency (seconds) at ``keep_used`` (default: the current keep);
        returns the keep ratio for the next call."""
        if not math.isfinite(latency_s) or latency_s < 0:
            raise ValueError(f"budget: latency must be a finite number of seconds >= 0, got {latency_s}")
        cfg = self.config
        keep_used = self.keep if keep_used is None else float(keep_used)
        stats = self._levels_seen.setdefault(round(keep_used, 6), [0.0, 0.0])
        stats[0] = min(stats[0] + 1, cfg.window)
        stats[1] += (latency_s - stats[1]) / stats[0]  # running mean, exponential once n reaches window
        if abs(keep_used - self.keep) < 1e-9:
            self._recent.append(float(latency_s))
        self.n_updates += 1
        budget = cfg.budget_s
        self.n_over_budget += latency_s > budget
        recent = list(self._recent)[-cfg.min_samples:]
        mean_here = float(np.mean(recent)) if recent else float(latency_s)
        ab = self.fit()
        new = self.keep
        if mean_here > budget * (1 + 1e-9) and self.keep > self.levels[0]:  # (float round-off is not a miss)
            if ab is not None and ab[1] > 0:
                new = self._snap((budget - ab[0]) / ab[1])
            else:  # one keep seen: latency ~ keep through the origin (over-estimates the saving)
                new = self._snap(self.keep * budget / mean_here)
            new = min(new, float(self.levels[max(0, int(np.searchsorted(self.levels, self.keep)) - 1)]))
        elif len(recent) >= cfg.min_samples and mean_here <= (1 - cfg.hysteresis) * budget:
            target = (1 - cfg.hysteresis) * budget
            if ab is not None and ab[1] > 0:
                new = max(self.keep, self._snap((target - ab[0]) / ab[1]))
            elif ab is None and self.keep < self.levels[-1]:  # no slope yet: probe one level up
                new = float(self.levels[int(np.searchsorted(self.levels, self.keep)) + 1])
        if new != self.keep:
            self.keep = new
            self._recent.clear()
            self.n_changes += 1
            self.last_change = self.n_updates
        return self.keep

    def report(self) -> dict[str, Any]:
        ab = self.fit()
        return {"keep_ratio": self.keep, "target_hz": self.config.target_hz, "budget_ms": self.config.budget_s * 1e3,
                "predicted_ms": None if ab is None else (ab[0] + ab[1] * self.keep) * 1e3,
                "fit_ms": None if ab is None else {"intercept": ab[0] * 1e3, "slope": ab[1] * 1e3},
                "n_updates": self.n_updates, "n_changes": self.n_changes,
                "calls_since_change": self.n_updates - self.last_change, "n_over_budget": self.n_over_budget}


def set_keep_ratio(policy_or_runner: Any, keep_ratio: float) -> float:
    """Set an accelerated runner's token-pruning keep ratio (call it between inferences, never inside one).

    Accepts a policy (its ``runner``) or the runner itself; returns the ratio set."""
    from vla_accel.accel.runner import AcceleratedRunner

    runner = getattr(policy_or_runner, "runner", policy_or_runner)
    if not isinstance(runner, AcceleratedRunner) or runner.config.pruning is None:
        raise ValueError("set_keep_ratio needs a policy accelerated with a token-pruning method "
                         "(accelerate(policy, 'vla_pruner', ...)); this one prunes no tokens")
    pruning = runner.config.pruning
    if pruning.keep_tokens is not None:
        raise ValueError("this policy's pruning budget is an absolute keep_tokens; the budget controller "
                         "adjusts keep_ratio -- configure the method with keep_ratio instead")
    new_pruning = dataclasses.replace(pruning, keep_ratio=float(keep_ratio))  # validates (0, 1]
    runner.config = dataclasses.replace(runner.config, pruning=new_pruning)
    if runner is not policy_or_runner and hasattr(policy_or_runner, "accel_config"):
        policy_or_runner.accel_config = runner.config
    return float(keep_ratio)
