"""msgpack with numpy arrays, no pickle: the wire format of `vla-accel serve` (openpi's convention).

An ndarray travels as the map ``{"__ndarray__": <raw bytes, C order>, "dtype": "<f4", "shape": [..]}``;
numpy scalars travel as plain msgpack numbers. Only numeric and boolean dtypes are allowed: an object,
string or void dtype could carry arbitrary Python objects (or needs pickle), so it is refused both when
packing and when unpacking. Everything else (dict, list, str, int, float, bool, None, bytes) is plain
msgpack. Imports numpy and msgpack only (this package must stay usable on a robot without torch).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

NDARRAY_KEY = "__ndarray__"
# b: bool, i/u: integers, f: floats, c: complex. Object ("O"), str ("U"/"S"), void ("V") and datetime
# kinds are refused: they need pickle or carry no numeric meaning for a policy.
ALLOWED_KINDS = frozenset("biufc")


class WireFormatError(ValueError):
    """A message that is not valid vla-accel msgpack (bad bytes, a forbidden dtype, a bad array)."""


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject:
        raise WireFormatError(
            f"arrays of dtype {dtype!s} cannot be sent; allowed kinds: bool, integer, unsigned, float, complex"
        )


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype)
        return {NDARRAY_KEY: np.ascontiguousarray(obj).tobytes(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype)
        return obj.item()
    raise TypeError(f"cannot pack an object of type {type(obj).__name__} (no pickle on this wire)")


def _decode(obj: dict) -> Any:
    if NDARRAY_KEY not in obj:
        return obj
    try:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(s) for s in obj["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise WireFormatError(f"bad ndarray header: {e}") from None
    _check_dtype(dtype)
    data = obj[NDARRAY_KEY]
    if not isinstance(data, (bytes, bytearray)):
        raise WireFormatError("ndarray payload must be bytes")
    if any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
        raise WireFormatError(f"ndarray of shape {shape} and dtype {dtype.str} does not match {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # a writable array we own


def packb(obj: Any) -> bytes:
    """Pack a message (nested dicts/lists of numbers, strings, ndarrays) into msgpack bytes."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Unpack msgpack bytes; raises WireFormatError on anything that is not a valid message."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireFormatError(f"expected a binary msgpack frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=True)
    except WireFormatError:
        raise
    except Exception as e:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...)
        raise WireFormatError(f"malformed msgpack: {type(e).__name__}: {e}") from None
