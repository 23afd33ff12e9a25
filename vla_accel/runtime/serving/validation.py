"""Check one request of the serving protocol (vla_accel.runtime.client.protocol) before it reaches the model.

Everything a client can get wrong is answered with a :class:`RequestError` naming what was wrong;
the server turns it into an ``{"type": "error"}`` reply and keeps the connection. Messages quote at
most a few dozen characters of the client's value (msgpack_numpy.brief): a 4 MB bad value must not
come back as a 29 MB reply, nor sit in the server's memory or logs.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vla_accel.runtime.client.msgpack_numpy import brief
from vla_accel.runtime.client.protocol import OBS_KEYS, REQUEST_TYPES

MAX_ERROR_CHARS = 300  # the longest error text a reply, a log line or ServerStats holds


class RequestError(ValueError):
    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message[:MAX_ERROR_CHARS])
        self.seq = seq


@dataclass(frozen=True)
class ObsSpec:
    """What the served policy takes: image side (None: any), cameras, state size, instruction limits.
    tokenize: the policy's tokenizer (text as the model sees it -> ids; None: no token limit);
    special_ids: ids a typed instruction must not produce (control and action tokens)."""

    image_size: int | None
    cameras: tuple[str, ...] = ("agentview",)
    state_dim: int = 8
    max_instruction_chars: int = 512
    max_instruction_tokens: int = 128
    tokenize: Callable[[str], list[int]] | None = None
    special_ids: frozenset = frozenset()


def request_seq(msg: Any) -> int | None:
    """The request's sequence number when it has a valid one (so even an error reply can echo it)."""
    seq = msg.get("seq") if isinstance(msg, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def check_request(msg: Any) -> tuple[str, int | None]:
    """-> (type, seq) of a well-formed request envelope."""
    if not isinstance(msg, dict):
        raise RequestError(f"a request must be a msgpack map, got {type(msg).__name__}")
    seq = request_seq(msg)
    if "seq" in msg and seq is None:
        raise RequestError(f"'seq' must be an integer, got {type(msg['seq']).__name__}", seq)
    kind = msg.get("type")
    # isinstance first: an ndarray `type` compared with `in` raises numpy's truth-value error
    if not isinstance(kind, str) or kind not in REQUEST_TYPES:
        raise RequestError(f"unknown request type {brief(kind, 40)}; valid: {', '.join(REQUEST_TYPES)}", seq)
    return kind, seq


def _image(obs: dict, key: str, spec: ObsSpec, seq: int | None) -> np.ndarray:
    image = obs.get(key)
    if not isinstance(image, np.ndarray):
        raise RequestError(f"obs[{key!r}] must be an ndarray (H, W, 3) uint8, got {type(image).__name__}", seq)
    if image.dtype != np.uint8:
        raise RequestError(f"obs[{key!r}] must have dtype uint8, got {image.dtype}", seq)
    if image.ndim != 3 or image.shape[2] != 3:
        raise RequestError(f"obs[{key!r}] must have shape (H, W, 3) (one unbatched RGB frame), got {image.shape}", seq)
    if spec.image_size is not None and image.shape[:2] != (spec.image_size, spec.image_size):
        raise RequestError(f"obs[{key!r}] must be {spec.image_size}x{spec.image_size} (the policy's input size), "
                           f"got {image.shape[0]}x{image.shape[1]}", seq)
    return image


def check_instruction(text: Any, spec: ObsSpec, seq: int | None = None) -> str:
    if not isinstance(text, str):
        raise RequestError(f"obs['instruction'] must be a string, got {type(text).__name__}", seq)
    if len(text) > spec.max_instruction_chars:  # before anything costly: bounds the tokenizer's work
        raise RequestError(f"obs['instruction'] has {len(text)} characters; the limit is "
                           f"{spec.max_instruction_chars} (serve.max_instruction_chars)", seq)
    # str.strip() keeps zero-width spaces (category Cf): ask for a letter, digit, mark or symbol
    if not any(unicodedata.category(c)[0] in "LNMS" for c in text):
        raise RequestError("obs['instruction'] is empty (no visible characters); a task instruction is required", seq)
    if spec.tokenize is not None:
        ids = spec.tokenize(text)
        if spec.special_ids.intersection(ids):
            raise RequestError("obs['instruction'] contains the text of a special token of the model's tokenizer "
                               "(e.g. <s>, </s>, <pad>, <act_...>); write the instruction as plain words", seq)
        if len(ids) > spec.max_instruction_tokens:
            raise RequestError(f"obs['instruction'] is {len(ids)} tokens long; the limit is "
                               f"{spec.max_instruction_tokens} (serve.max_instruction_tokens)", seq)
    return text


def _state(state: Any, spec: ObsSpec, seq: int | None) -> np.ndarray:
    if not isinstance(state, np.ndarray) or state.dtype.kind != "f":
        raise RequestError(f"obs['state'] must be a float ndarray ({spec.state_dim},), got "
                           f"{getattr(state, 'dtype', type(state).__name__)}", seq)
    if state.shape != (spec.state_dim,):
        raise RequestError(f"obs['state'] must have shape ({spec.state_dim},), got {state.shape}", seq)
    with np.errstate(over="ignore"):
        state32 = state.astype(np.float32)  # cast first: a float64 1e300 is finite but becomes inf
    if not np.isfinite(state32).all():
        raise RequestError("obs['state'] holds NaN or inf (as float32)", seq)
    return state32


def check_obs(obs: Any, spec: ObsSpec, seq: int | None = None) -> dict:
    """-> the observation dict the policy gets (only the known keys), or RequestError."""
    if not isinstance(obs, dict):
        raise RequestError(f"'obs' must be a map of observations, got {type(obs).__name__}", seq)
    unknown = sorted(str(k) for k in obs if k not in OBS_KEYS)
    if unknown:
        named = ", ".join(brief(k, 40) for k in unknown[:5])
        raise RequestError(f"unknown observation keys [{named}{', ...' if len(unknown) > 5 else ''}]; valid: "
                           f"{', '.join(OBS_KEYS)}", seq)
    needed = [f"{cam}_image" for cam in spec.cameras] + ["instruction"]
    missing = [k for k in needed if k not in obs]
    if missing:
        raise RequestError(f"obs lacks {missing}; this policy needs {needed}", seq)
    clean = {f"{cam}_image": _image(obs, f"{cam}_image", spec, seq) for cam in spec.cameras}
    clean["instruction"] = check_instruction(obs["instruction"], spec, seq)
    if "state" in obs:
        clean["state"] = _state(obs["state"], spec, seq)
    return clean


def check_keep_ratio(msg: dict, seq: int | None) -> float:
    value = msg.get("keep_ratio")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise RequestError(f"'keep_ratio' must be a number in (0, 1], got {brief(value, 40)}", seq)
    return float(value)
