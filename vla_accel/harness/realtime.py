"""Real-time control on a simulated clock: the environment does not wait for the policy.

``eval.realtime=false`` (the usual benchmark loop) lets the simulation pause while the policy thinks:
every env step executes the action computed from that step's observation. ``eval.realtime=true``
models a robot whose controller runs at ``control_hz`` no matter how slow the policy is:

* The env steps at period P = 1000 / control_hz ms of *simulated* time; step k spans [k P, (k+1) P).
* The policy computes one call at a time. A call started at step k sees the observation of step k
  (obs_k, the frame it was given) and its action applies from step ``k + d`` with
  ``d = ceil(latency / P)`` -- the first step that begins after the computation finished. A call of
  zero latency applies at once (d = 0), which makes a zero-latency real-time run identical to the
  synchronous loop.
* While a call is in flight the env keeps executing the last delivered action (for a chunked policy
  that is the last action it popped from its chunk); before the first action of an episode is ready
  it executes the **hold action** ``[0, 0, 0, 0, 0, 0, hold_gripper]``: zero end-effector motion and
  the gripper command it starts every episode with (``eval.hold_gripper``, default -1 = open, the
  state every suite resets to).
* When a call's result arrives at step k the policy is free again and starts its next call at once,
  on obs_k. At most one new action takes effect per step: a call started at a step where another
  result was just delivered applies from step k + max(d, 1) -- so a chunked policy's queue pops
  (zero-latency calls, not inference) replay its chunk one action per step.
* Only calls that ran inference have latency; a chunked policy's queue pops cost zero.

Latency per inference call (``eval.latency_model``):

* ``measured``: the call's wall time (time.perf_counter, CUDA-synchronised) -- not reproducible;
* ``fixed``: ``eval.latency_ms`` for every call -- reproducible;
* ``scaled``: measured x ``eval.latency_scale`` (e.g. a CPU run standing in for a GPU that is
  ``1/scale`` times faster).

Because the clock is simulated (the env is stepped in this process while we count the policy's
latency), a run with the ``fixed`` model gives the same episodes every time. A step "ran on a stale
action" when the action it executed was not delivered at that step (a repeat of an older action, or the
hold action); episode records and the timing block count them. The synchronous loop uses the same
scheduler with every delay 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vla_accel.measure.timing import control_period_ms

LATENCY_MODELS = ("measured", "fixed", "scaled")
ACTION_DIM = 7


@dataclass(frozen=True)
class LatencyModel:
    """Turns one inference call's measured wall time (ms) into the latency the simulated clock charges."""

    kind: str = "measured"
    param: float | None = None  # fixed: latency_ms; scaled: the factor; measured: None

    def __post_init__(self) -> None:
        if self.kind not in LATENCY_MODELS:
            raise ValueError(f"unknown latency_model {self.kind!r}; valid: {', '.join(LATENCY_MODELS)}")
        if self.kind == "measured":
            if self.param is not None:
                raise ValueError("latency_model=measured takes no parameter")
        elif self.param is None or not math.isfinite(self.param) or self.param < 0:
            what = "eval.latency_ms" if self.kind == "fixed" else "eval.latency_scale"
            raise ValueError(f"latency_model={self.kind} needs {what} >= 0, got {self.param!r}")

    @classmethod
    def from_eval_cfg(cls, ecfg) -> LatencyModel:
        kind = ecfg.get("latency_model", "measured")
        if kind == "fixed":
            return cls(kind, _number(ecfg.get("latency_ms"), "eval.latency_ms"))
        if kind == "scaled":
            return cls(kind, _number(ecfg.get("latency_scale"), "eval.latency_scale"))
        return cls(kind)

    def __call__(self, measured_ms: float) -> float:
        if self.kind == "fixed":
            return float(self.param)
        if self.kind == "scaled":
            return float(measured_ms) * float(self.param)
        return float(measured_ms)


def _number(value, name: str) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def hold_action(hold_gripper: float = -1.0) -> np.ndarray:
    """Zero end-effector motion, gripper command `hold_gripper` (-1 open, +1 closed): (7,) float32."""
    if not -1.0 <= float(hold_gripper) <= 1.0:
        raise ValueError(f"hold_gripper must be in [-1, 1], got {hold_gripper!r}")
    action = np.zeros(ACTION_DIM, dtype=np.float32)
    action[-1] = float(hold_gripper)
    return action


def delay_steps(latency_ms: float, period_ms: float) -> int:
    """d = ceil(latency / period): the first step boundary at or after the call finishes (0 for 0 ms)."""
    if latency_ms <= 0:
        return 0
    return max(1, math.ceil(latency_ms / period_ms - 1e-9))  # 1e-9: 50.000000001 ms is one 50 ms period


class ActionScheduler:
    """The simulated clock's bookkeeping: which action each env step executes.

    Per step k the loop calls ``deliver(k)``, then (if ``idle``) runs the policy on obs_k and hands the
    result to ``submit(k, action, latency_ms)``, then executes ``current``. ``fresh`` says whether
    ``current`` was delivered at this step (else the step runs on a stale action).
    """

    def __init__(self, control_hz: float, hold: np.ndarray, realtime: bool = True) -> None:
        self.period_ms = control_period_ms(control_hz)
        self.realtime = bool(realtime)
        self.current = np.asarray(hold, dtype=np.float32)
        self.fresh = False
        self.holding = True  # no action delivered yet this episode
        self._pending: tuple[int, np.ndarray] | None = None  # (step it applies at, action)
        self._delivered_at: int | None = None

    @property
    def idle(self) -> bool:
        return self._pending is None

    def deliver(self, step: int) -> None:
        self.fresh = False
        if self._pending is not None and self._pending[0] <= step:
            self._apply(step, self._pending[1])
            self._pending = None

    def submit(self, step: int, action: np.ndarray, latency_ms: float) -> int:
        """A call started at `step` produced `action` after `latency_ms`; returns the step it applies at."""
        d = delay_steps(latency_ms, self.period_ms) if self.realtime else 0
        if self._delivered_at == step:
            d = max(d, 1)  # one new action per step
        if d == 0:
            self._apply(step, action)
        else:
            self._pending = (step + d, np.asarray(action, dtype=np.float32))
        return step + d

    def _apply(self, step: int, action: np.ndarray) -> None:
        self.current = np.asarray(action, dtype=np.float32)
        self.fresh, self.holding, self._delivered_at = True, False, step
