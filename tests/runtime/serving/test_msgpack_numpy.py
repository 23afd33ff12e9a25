"""The wire format: numpy arrays through msgpack without pickle; forbidden dtypes refused."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import numpy as np
import pytest

from vla_accel.runtime.client.msgpack_numpy import WireFormatError, packb, unpackb


@pytest.mark.parametrize("dtype", ["uint8", "int64", "float32", "float64", "bool", "complex64", ">f4"])
def test_arrays_round_trip_exactly(dtype):
    a = (np.arange(24).reshape(2, 3, 4) % 2 if dtype == "bool" else np.arange(24).reshape(2, 3, 4)).astype(dtype)
    b = unpackb(packb({"x": a, "nested": [a[0], {"y": a[1, 1]}]}))
    for got, want in ((b["x"], a), (b["nested"][0], a[0]), (b["nested"][1]["y"], a[1, 1])):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        assert got.flags.writeable


def test_non_contiguous_and_scalars():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    assert np.array_equal(unpackb(packb(a)), a)
    assert unpackb(packb({"s": np.float32(1.5), "i": np.int64(3)})) == {"s": 1.5, "i": 3}


@pytest.mark.parametrize("bad", [np.array([1, "a"], dtype=object), np.array(["text"]), np.zeros(2, "V4"),
                                 np.array(["2020-01-01"], dtype="datetime64[D]")])
def test_forbidden_dtypes_are_refused_on_both_ends(bad):
    with pytest.raises(WireFormatError, match="cannot be sent"):
        packb({"x": bad})
    forged = msgpack.packb({"__ndarray__": b"\0" * bad.nbytes, "dtype": bad.dtype.str, "shape": list(bad.shape)})
    with pytest.raises(WireFormatError):
        unpackb(forged)


def test_other_python_objects_are_refused():
    with pytest.raises(TypeError, match="no pickle"):
        packb({"x": object()})


@pytest.mark.parametrize("header", [{"dtype": "<f4", "shape": [3]}, {"dtype": "nope", "shape": [1]},
                                    {"dtype": "<f4", "shape": "x"}, {"dtype": "<f4", "shape": [-1]}])
def test_bad_array_headers(header):
    with pytest.raises(WireFormatError):
        unpackb(msgpack.packb({"__ndarray__": b"\0" * 4, **header}))


def test_the_client_and_the_package_root_do_not_import_torch():
    code = ("import sys, vla_accel, vla_accel.runtime.client; from vla_accel.runtime.client import WebsocketClientPolicy; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
