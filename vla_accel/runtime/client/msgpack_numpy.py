"""msgpack with numpy arrays, no pickle: the wire format of `vla-accel serve` (openpi's convention).

An ndarray travels as the map ``{"__ndarray__": <raw bytes, C order>, "dtype": "<f4", "shape": [..]}``;
numpy scalars travel as plain msgpack numbers. Only plain numeric and boolean dtypes are allowed, named
by their short string (``"<f4"``, ``"|u1"``, ``"|b1"``, ...): an object, string, void or structured dtype
could carry arbitrary Python objects, needs pickle, or (a structured dtype of 380,000 fields) takes
numpy a second to parse -- so the header's dtype is looked up in a fixed table, never given to
``np.dtype``. Shapes are bounded (MAX_NDIM dimensions, sizes matching the payload).

Before anything is built, ``unpackb`` walks the message's structure (``check_structure``): a message
holding more than ``max_items`` containers and elements, or nested deeper than ``max_depth``, is
refused -- msgpack builds millions of empty lists from 4 MB in about a second, holding the GIL.
Everything else (dict, list, str, int, float, bool, None, bytes) is plain msgpack. Imports numpy and
msgpack only (this package must stay usable on a robot without torch).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

NDARRAY_KEY = "__ndarray__"
# b: bool, i/u: integers, f: floats, c: complex. Object ("O"), str ("U"/"S"), void ("V") and datetime
# kinds are refused: they need pickle or carry no numeric meaning for a policy.
ALLOWED_KINDS = frozenset("biufc")
_PLAIN = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128")
# every spelling a header may use -> the dtype; anything else is refused without parsing it
ALLOWED_DTYPES: dict[str, np.dtype] = {
    spec: np.dtype(spec) for name in _PLAIN for order in "<>=|"
    for spec in (np.dtype(name).newbyteorder(order).str if order != "|" else np.dtype(name).str, name)}
MAX_NDIM = 8
MAX_ITEMS = 4096  # containers + elements of one message (a request has a few dozen)
MAX_DEPTH = 16
BRIEF_CHARS = 80


class WireFormatError(ValueError):
    """A message that is not valid vla-accel msgpack (bad bytes, a forbidden dtype, a bad array)."""


def brief(value: Any, limit: int = BRIEF_CHARS) -> str:
    """A bounded description of a client's value for an error message (never the whole value: a 4 MB
    string echoed back made a 29 MB reply). Containers are named by type and size, not printed."""
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[:limit])
        return text if len(value) <= limit else f"{text}... ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + "..."
    size = len(value) if isinstance(value, (list, tuple, dict)) else None
    return f"<{type(value).__name__}{'' if size is None else f' of {size} items'}>"


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype:
        raise WireFormatError(
            f"arrays of dtype {dtype!s:.{BRIEF_CHARS}} cannot be sent; allowed kinds: bool, integer, unsigned, "
            "float, complex")


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype)
        return {NDARRAY_KEY: np.ascontiguousarray(obj).tobytes(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype)
        return obj.item()
    raise TypeError(f"cannot pack an object of type {type(obj).__name__} (no pickle on this wire)")


def header_dtype(spec: Any) -> np.dtype:
    """The dtype a header names, from the fixed table only."""
    dtype = ALLOWED_DTYPES.get(spec) if isinstance(spec, str) else None
    if dtype is None:
        if isinstance(spec, str) and spec.lstrip("<>|=") in ("O", "object"):
            raise WireFormatError("arrays of dtype object cannot be sent (no pickle on this wire)")
        raise WireFormatError(f"arrays of dtype {brief(spec)} cannot be sent; allowed: plain numeric dtypes "
                              "such as '<f4', '|u1', '|b1' (no structured, string or object dtypes)")
    return dtype


def header_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        raise WireFormatError(f"bad ndarray header: shape must be a list of at most {MAX_NDIM} sizes, got {brief(shape)}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape):
        raise WireFormatError(f"bad ndarray header: shape sizes must be integers >= 0, got {brief(list(shape))}")
    return tuple(shape)


def array_from_header(data: Any, dtype_spec: Any, shape_spec: Any) -> np.ndarray:
    """Shared by this wire and the JSON one (json_numpy): a checked, writable array we own."""
    dtype, shape = header_dtype(dtype_spec), header_shape(shape_spec)
    if not isinstance(data, (bytes, bytearray)):
        raise WireFormatError("ndarray payload must be bytes")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
        raise WireFormatError(f"ndarray of shape {shape} and dtype {dtype.str} does not match {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _decode(obj: dict) -> Any:
    if NDARRAY_KEY not in obj:
        return obj
    if "dtype" not in obj or "shape" not in obj:
        raise WireFormatError("bad ndarray header: it needs 'dtype' and 'shape'")
    return array_from_header(obj[NDARRAY_KEY], obj["dtype"], obj["shape"])


def packb(obj: Any) -> bytes:
    """Pack a message (nested dicts/lists of numbers, strings, ndarrays) into msgpack bytes."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _kind(first: int) -> str:
    """'map', 'array' or 'leaf' from a msgpack object's first byte."""
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return "map"
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        return "array"
    return "leaf"


def check_structure(data: bytes, max_items: int = MAX_ITEMS, max_depth: int = MAX_DEPTH) -> None:
    """Walk the message without building it: refuse more than max_items containers + elements, or a
    nesting deeper than max_depth. Headers give their lengths first, so a 4-million-element array is
    refused from its header alone."""
    view = memoryview(data)
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
    unpacker.feed(view)
    stack, items = [1], 0  # elements still to read at each open level (the root: one object)
    while stack:
        if stack[-1] == 0:
            stack.pop()
            continue
        stack[-1] -= 1
        offset = unpacker.tell()
        if offset >= len(data):
            raise WireFormatError("malformed msgpack: truncated message")
        kind = _kind(data[offset])
        if kind == "leaf":
            unpacker.skip()
            continue
        n = unpacker.read_map_header() * 2 if kind == "map" else unpacker.read_array_header()
        items += n + 1
        if items > max_items or len(stack) >= max_depth:
            raise WireFormatError(f"message too complex: more than {max_items} items or {max_depth} levels")
        stack.append(n)
    if unpacker.tell() != len(data):
        raise WireFormatError("malformed msgpack: extra data after the message")


def unpackb(data: bytes, max_items: int = MAX_ITEMS) -> Any:
    """Unpack msgpack bytes; raises WireFormatError on anything that is not a valid message."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireFormatError(f"expected a binary msgpack frame, got {type(data).__name__}")
    try:
        check_structure(data, max_items)
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=True)
    except WireFormatError:
        raise
    except Exception as e:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...)
        raise WireFormatError(f"malformed msgpack: {type(e).__name__}: {str(e)[:BRIEF_CHARS]}") from None
