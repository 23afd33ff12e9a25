"""``fork_episode(policy)``: a second view of a VLA policy with its OWN episode state and the SAME weights.

A policy server holds one model and many clients; each client's episode (the accelerator's temporal
pruning history and token-reuse memory, the select_action queue, CogACT's action ensemble and noise
generator, the stage timer) must be its own, while the weights must not be copied. ``copy.copy`` of an
``nn.Module`` copies its ``__dict__`` shallowly: ``_parameters`` / ``_modules`` / ``_buffers`` stay
the very same dicts, so every tensor is shared (no memory, and a weight update is seen by all views).
Then every per-episode attribute is replaced by a fresh one, and the accelerator's instance-level
wrappers (the DiT head cache, VLA-Cache's frame tap, ``infer``) are re-bound to the view.

The views must not run concurrently (they share modules, and the head cache keeps per-loop state in
the shared DiT); the server serialises inference through one worker thread.
"""

from __future__ import annotations

import copy
import functools
from collections import deque
from typing import Any

from vla_accel.accelerate import _FRAME_TAP, _install_frame_tap
from vla_accel.drop_in import INFER_ATTR, bind_infer
from vla_accel.head_cache import ATTR as HEAD_CACHE_ATTR

# Attributes holding per-episode state in the policies (policies/openvla, policies/cogact) and how
# to get a fresh one; `runner` is handled apart (it needs the accelerator's config).
_FRESH = {
    "_queue": lambda q: deque(maxlen=q.maxlen),
    "ensembler": copy.deepcopy,  # CogACT's AdaptiveEnsembler: a small deque of past chunks
    "timer": copy.copy,  # vla_accel.timing.StageTimer: its `last` record and call count
}


def _fresh_runner(runner: Any) -> Any:
    from vla_accel.runner import AcceleratedRunner

    if isinstance(runner, AcceleratedRunner):
        return AcceleratedRunner(runner.config)  # its own pruning method instance and history
    return type(runner)()  # HFRunner: stateless, but a view never shares a runner


def fork_episode(policy: Any) -> Any:
    """A view of ``policy`` sharing every parameter and buffer, with fresh episode state (reset)."""
    if not hasattr(policy, "runner"):
        raise ValueError(f"{type(policy).__name__} has no LLM runner; fork_episode serves VLA policies only")
    view = copy.copy(policy)
    state = vars(view)
    view.runner = _fresh_runner(policy.runner)
    for name, fresh in _FRESH.items():
        if name in state:
            state[name] = fresh(state[name])
    if "timer" in state and hasattr(state["timer"], "last"):
        state["timer"].last = {}
    if "_generator" in state:  # CogACT's noise generator: same seed schedule, separate stream
        import torch

        gen = torch.Generator(device=state["_generator"].device)
        gen.set_state(state["_generator"].get_state())
        state["_generator"] = gen
    cache = state.get(HEAD_CACHE_ATTR)
    if cache is not None:  # the head cache restarts at every denoising loop: wrap the view's own loop
        loop = type(view).sample_actions.__get__(view)

        @functools.wraps(loop)
        def sample_actions(*args, **kwargs):
            cache.start_loop()
            return loop(*args, **kwargs)

        state["sample_actions"] = sample_actions
    if state.pop(_FRAME_TAP, False):  # VLA-Cache's frame tap must feed the view's own runner
        state.pop("encode_images", None)
        _install_frame_tap(view, view.runner)
    if INFER_ATTR in state:
        bind_infer(view)
    view.reset()
    return view
