"""Stage timers and latency summaries (docs/interfaces.md, "Timing").

A policy owns one :class:`StageTimer`. Each inference call is one record::

    with policy.timer.call():                 # one inference call ("total")
        with policy.timer.stage("vision"): ...
        with policy.timer.stage("prefill"): ...
    policy.last_timing                        # {"vision": ms, "prefill": ms, ..., "total": ms}

Code that has no reference to the timer (the accelerator's runner, below the policy) times its part
with the module-level :func:`stage`: ``StageTimer.call()`` makes its timer this thread's *active* timer
for the call's duration, and ``stage(name)`` times into it (a shared ``nullcontext`` when no call is
active or the timer is off). Such stages nest inside the policy's: the runner's "select" (the pruning
method's own work: attention probes, the action-attention capture, scoring, selection and the history
update) runs inside "prefill" and "decode", so prefill and decode INCLUDE select; it is reported beside
them, not added to them.

Clock: ``time.perf_counter()``. When the timed model lives on CUDA the timer calls
``torch.cuda.synchronize()`` at every stage boundary, so a stage's time is the GPU work it queued, not
the time to launch kernels. A disabled timer (``StageTimer(enabled=False)``) hands back one shared
``nullcontext`` and never reads the clock: the cost is one attribute test per stage.

:func:`summarize` turns per-call values into the ``{"p50", "p90", "p99", "mean"}`` of the interface
(percentiles by linear interpolation, numpy's default, over the calls after warm-up).
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Iterable, Iterator

import numpy as np

STAGES = ("vision", "prefill", "select", "decode", "action_head", "total")  # select: inside prefill/decode
NESTED_STAGES = {"select": ("prefill", "decode")}  # a stage timed inside others (already in their time)
PERCENTILES = (50, 90, 99)
_NULL = contextlib.nullcontext()
_ACTIVE = threading.local()  # .timer: the StageTimer whose call() is running on this thread, if any


def stage(name: str):
    """Time stage ``name`` into the timer of the call running on this thread (see the module docstring);
    a shared no-op context when there is none. For code that cannot reach the policy's timer."""
    timer = getattr(_ACTIVE, "timer", None)
    return _NULL if timer is None else timer.stage(name)


def cuda_sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


class StageTimer:
    """Times named stages of one inference call; keeps the last call's record and a call counter.

    cuda: synchronise the GPU at each boundary (set it when the model is on CUDA; ``for_module``
        decides from a module's parameters).
    enabled: False makes every ``stage``/``call`` a no-op (``last`` stays empty; ``n_calls`` still
        counts, because the rollout needs to know which steps ran inference).
    """

    def __init__(self, cuda: bool = False, enabled: bool = True) -> None:
        self.cuda = bool(cuda)
        self.enabled = bool(enabled)
        self.n_calls = 0  # inference calls finished so far (the rollout compares it before/after a step)
        self.last: dict[str, float] = {}  # stage -> ms of the last finished call
        self._current: dict[str, float] | None = None
        self._clock = time.perf_counter

    @classmethod
    def for_module(cls, module, enabled: bool = True) -> StageTimer:
        try:
            device = next(module.parameters()).device
        except (StopIteration, AttributeError):
            return cls(cuda=False, enabled=enabled)
        return cls(cuda=device.type == "cuda", enabled=enabled)

    def _now(self) -> float:
        if self.cuda:
            cuda_sync()
        return self._clock()

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        start = self._now()
        try:
            yield
        finally:
            ms = (self._now() - start) * 1e3
            if self._current is not None:
                # a stage entered twice in one call (e.g. two encoders) adds up
                self._current[name] = self._current.get(name, 0.0) + ms

    def stage(self, name: str):
        """Context manager timing stage `name` of the current call (a no-op outside a call or when off)."""
        if not self.enabled or self._current is None:
            return _NULL
        return self._timed(name)

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """One inference call: its wall time is the "total" stage; nested calls count once (outermost)."""
        if self._current is not None:  # e.g. select_action -> predict_action_chunk
            yield
            return
        if not self.enabled:
            try:
                yield
            finally:
                self.n_calls += 1
            return
        self._current = {}
        outer = getattr(_ACTIVE, "timer", None)
        _ACTIVE.timer = self  # module-level stage() now times into this call
        start = self._now()
        try:
            yield
        finally:
            record = self._current
            record["total"] = (self._now() - start) * 1e3
            self._current = None
            _ACTIVE.timer = outer
            self.last = record
            self.n_calls += 1


def summarize(values: Iterable[float]) -> dict[str, float] | None:
    """{"p50", "p90", "p99", "mean"} of the values (None when there are none)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return None
    out = {f"p{q}": float(np.percentile(arr, q)) for q in PERCENTILES}
    out["mean"] = float(arr.mean())
    return out


def stage_summaries(records: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-stage summaries of per-call {stage: ms} records; a stage absent from every record is left out.
    Stages are summarised over the calls that timed them (a policy without a DiT has no action_head)."""
    out = {}
    for stage in STAGES + tuple(sorted({k for r in records for k in r} - set(STAGES))):
        s = summarize(r[stage] for r in records if stage in r)
        if s is not None:
            out[stage] = s
    return out


def control_period_ms(control_hz: float) -> float:
    if not (isinstance(control_hz, (int, float)) and math.isfinite(control_hz) and control_hz > 0):
        raise ValueError(f"control_hz must be a positive number, got {control_hz!r}")
    return 1000.0 / float(control_hz)


def count_deadline_misses(latencies_ms: Iterable[float], control_hz: float) -> int:
    """Calls whose latency exceeded the control period 1000 / control_hz ms (equal is on time)."""
    period = control_period_ms(control_hz)
    return int(sum(1 for x in latencies_ms if x > period))
