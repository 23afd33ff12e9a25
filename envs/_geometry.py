"""Small pure-numpy conversions shared by the benchmark adapters (no simulator needed)."""

from __future__ import annotations

import numpy as np


def quat_xyzw_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> axis-angle vector (3,) = axis * angle.

    Follows robosuite's `quat2axisangle`, the function LIBERO's datasets and OpenVLA's LIBERO eval use
    to build the 8-D proprio state: angle = 2 * acos(w) in [0, 2*pi], axis = xyz / sin(angle / 2),
    with NO hemisphere canonicalisation (q and -q give different vectors), so states built here match
    that data. The identity (and any |w| ~ 1) maps to zeros. The quaternion is normalised first.
    """
    q = np.asarray(quat, dtype=np.float64).reshape(-1)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f"expected a finite quaternion of shape (4,), got {np.asarray(quat).shape}: {quat}")
    norm = np.linalg.norm(q)
    if norm == 0.0:
        raise ValueError("the zero quaternion has no orientation")
    x, y, z, w = q / norm
    w = float(np.clip(w, -1.0, 1.0))
    sin_half = np.sqrt(1.0 - w * w)
    if np.isclose(sin_half, 0.0):
        return np.zeros(3)
    return np.array([x, y, z]) * (2.0 * np.arccos(w) / sin_half)


def quat_wxyz_to_xyzw(quat: np.ndarray) -> np.ndarray:
    """MuJoCo stores quaternions scalar-first (w, x, y, z); robosuite scalar-last (x, y, z, w)."""
    q = np.asarray(quat, dtype=np.float64).reshape(-1)
    if q.shape != (4,):
        raise ValueError(f"expected a quaternion of shape (4,), got {q.shape}")
    return np.roll(q, -1)


def rotate_180(image: np.ndarray) -> np.ndarray:
    """Turn an (H, W, C) image half a turn (flip rows AND columns), as a contiguous copy.

    A camera mounted upside down is *rolled* by 180 degrees about its view axis; undoing a roll needs a
    rotation, not a vertical flip alone (which would mirror left and right). OpenVLA's LIBERO eval does
    the same (`img[::-1, ::-1]`).
    """
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
    return np.ascontiguousarray(image[::-1, ::-1])


__all__ = ["quat_wxyz_to_xyzw", "quat_xyzw_to_axis_angle", "rotate_180"]
