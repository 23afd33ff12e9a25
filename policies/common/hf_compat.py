"""Call transformers the way the installed version wants.

transformers 5.x renames the KV-cache keyword of the Llama forwards and of the mask builders from
`past_key_values` to `cache` (the old name warns from 5.24 and goes in 5.40); the versions this project
supports before the rename (from 5.14, the first whose `create_causal_mask` takes the `layer_idx` the
runner needs) know only `past_key_values`. Each callable's own signature says which it takes, so every
call site passes `**cache_kwarg(fn, kv)` and nothing warns on either side.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from torch import nn


@functools.lru_cache(maxsize=None)
def _keyword(fn: Callable, new: str, old: str) -> str:
    params = inspect.signature(inspect.unwrap(fn)).parameters
    return new if new in params else old


def cache_kwarg(fn: Callable, kv: Any) -> dict[str, Any]:
    """{name: kv} with the name ``fn`` (a transformers forward or mask builder) takes its KV cache under."""
    if isinstance(fn, nn.Module):
        fn = type(fn).forward  # the class's (an instance may carry a test's spy or a hook)
    return {_keyword(fn, "cache", "past_key_values"): kv}

