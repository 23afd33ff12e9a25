"""JSON with numpy arrays in json_numpy's convention (the wire of OpenVLA's REST ``deploy.py``).

An array travels as ``{"__numpy__": <base64 of the C-order bytes>, "dtype": "<f4", "shape": [..]}``
(json_numpy 2.x; the older key ``"__ndarray__"`` is read too), a numpy scalar as the same map with
shape ``[]``. Decoding goes through msgpack_numpy's checks (a fixed table of plain numeric dtypes,
bounded shapes, sizes matching the payload) and refuses a body with more than ``max_containers``
JSON arrays and objects before parsing it (json builds a million empty lists from 4 MB in a fraction
of a second, holding the GIL). Imports numpy only (and the standard library).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from vla_accel.runtime.client.msgpack_numpy import WireFormatError, _check_dtype, array_from_header, brief

KEYS = ("__numpy__", "__ndarray__")
MAX_CONTAINERS = 2**17  # an image sent as plain nested lists (224 x 224 x 3) has ~50,000


def _default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        _check_dtype(obj.dtype)
        data = np.ascontiguousarray(obj).tobytes()
        return {"__numpy__": base64.b64encode(data).decode("ascii"), "dtype": obj.dtype.str, "shape": list(np.shape(obj))}
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default)


def _hook(obj: dict) -> Any:
    key = next((k for k in KEYS if k in obj), None)
    if key is None:
        return obj
    if not isinstance(obj[key], str) or "dtype" not in obj or "shape" not in obj:
        raise WireFormatError(f"bad json_numpy array: {key!r} must be a base64 string beside 'dtype' and 'shape'")
    try:
        data = base64.b64decode(obj[key], validate=True)
    except (binascii.Error, ValueError):
        raise WireFormatError("bad json_numpy array: the payload is not base64") from None
    array = array_from_header(data, obj["dtype"], obj["shape"])
    return array[()] if array.ndim == 0 else array  # json_numpy gives a numpy scalar for shape []


def loads(text: str | bytes, max_containers: int = MAX_CONTAINERS) -> Any:
    """Parse a JSON document; raises WireFormatError on anything that is not valid."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if raw.count(b"[") + raw.count(b"{") > max_containers:  # counts brackets in strings too: stricter only
        raise WireFormatError(f"JSON body too complex: more than {max_containers} arrays and objects")
    try:
        return json.loads(raw, object_hook=_hook)
    except WireFormatError:
        raise
    except RecursionError:
        raise WireFormatError("JSON body nested too deeply") from None
    except (ValueError, TypeError) as e:
        raise WireFormatError(f"malformed JSON: {brief(str(e))}") from None
