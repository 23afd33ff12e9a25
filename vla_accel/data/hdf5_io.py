"""Demonstration files: HDF5 in the robomimic/LIBERO layout of docs/interfaces.md.

Writing is atomic: `DemoWriter` fills a temporary file beside the target and renames it into place
only in `commit()`; a failed or interrupted run removes the temporary file and never touches an
existing target. Reading validates the layout and names the first thing that is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

ACTION_DIM = 7
STATE_DIM = 8
IMAGE_KEYS = ("agentview_image", "wrist_image")
DEMO_ATTRS = ("num_samples", "instruction", "task", "task_id", "suite", "init_state_id", "success",
              "noise_std")
DATA_ATTRS = ("suite", "env_args", "total", "date", "command")
COMPRESSIONS = ("gzip", "lzf", "none")


class DemoFormatError(ValueError):
    """A demonstration file that does not follow the layout of docs/interfaces.md."""


@dataclass
class Demo:
    """One demonstration, arrays in memory. T = num_samples."""

    name: str                     # "demo_<i>"
    agentview_image: np.ndarray   # (T, H, W, 3) uint8
    wrist_image: np.ndarray       # (T, H, W, 3) uint8
    state: np.ndarray             # (T, 8) float32
    actions: np.ndarray           # (T, 7) float32, the expert's clean action (training label)
    executed_actions: np.ndarray  # (T, 7) float32, label + noise, clipped
    rewards: np.ndarray           # (T,) float32
    dones: np.ndarray             # (T,) uint8
    attrs: dict

    @property
    def instruction(self) -> str:
        return self.attrs["instruction"]

    @property
    def success(self) -> bool:
        return bool(self.attrs["success"])

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def _demo_index(name: str) -> int:
    return int(name.split("_", 1)[1])


class DemoWriter:
    """Write demos one at a time into `path`, atomically.

    with DemoWriter(path, suite=..., env_args={...}, command=...) as w:
        w.add_demo(...)
        w.commit()      # without commit (an exception, Ctrl-C), the temp file is deleted
    """

    def __init__(self, path: str | Path, *, suite: str, env_args: dict, command: str = "",
                 overwrite: bool = False, compression: str = "gzip", compression_level: int = 4) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r}; valid: {', '.join(COMPRESSIONS)}")
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite (collect.overwrite=true) to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._compression = None if compression == "none" else compression
        self._level = compression_level if compression == "gzip" else None
        self._file = h5py.File(self.tmp_path, "w")
        self._data = self._file.create_group("data")
        self._data.attrs["suite"] = suite
        self._data.attrs["env_args"] = json.dumps(env_args)
        self._data.attrs["command"] = command
        self._data.attrs["date"] = _now()
        self.n_demos = 0
        self.total = 0
        self.committed = False

    def add_demo(self, *, agentview_image, wrist_image, state, actions, executed_actions, rewards,
                 dones, instruction: str, task: str, task_id: int, suite: str, init_state_id: int,
                 success: bool, noise_std: float, init_split: str = "eval") -> str:
        """Append one demo as data/demo_<n>; returns its name. Arrays are checked against the layout."""
        arrays = _as_layout(agentview_image=agentview_image, wrist_image=wrist_image, state=state,
                            actions=actions, executed_actions=executed_actions, rewards=rewards,
                            dones=dones)
        _check_arrays(arrays, where="new demo")
        name = f"demo_{self.n_demos}"
        grp = self._data.create_group(name)
        obs = grp.create_group("obs")
        for key in IMAGE_KEYS:
            img = arrays[key]
            # One chunk per frame: a training loader reads frames at random, each decompresses alone.
            obs.create_dataset(key, data=img, chunks=(1,) + img.shape[1:],
                               compression=self._compression, compression_opts=self._level)
        obs.create_dataset("state", data=arrays["state"])
        for key in ("actions", "executed_actions", "rewards", "dones"):
            grp.create_dataset(key, data=arrays[key])
        t = int(arrays["actions"].shape[0])
        grp.attrs.update({"num_samples": t, "instruction": instruction, "task": task,
                          "task_id": int(task_id), "suite": suite, "init_state_id": int(init_state_id),
                          "init_split": init_split, "success": bool(success), "noise_std": float(noise_std)})
        self.n_demos += 1
        self.total += t
        return name

    def commit(self) -> Path:
        """Finish the file and rename it onto the target path."""
        self._data.attrs["total"] = self.total
        self._file.flush()
        self._file.close()
        os.replace(self.tmp_path, self.path)
        self.committed = True
        return self.path

    def discard(self) -> None:
        """Close and delete the temporary file (an existing target stays as it was)."""
        try:
            if self._file.id.valid:
                self._file.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "DemoWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.discard()


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_LAYOUT = {  # key -> (dtype, trailing shape; None = any size)
    "agentview_image": (np.uint8, (None, None, 3)),
    "wrist_image": (np.uint8, (None, None, 3)),
    "state": (np.float32, (STATE_DIM,)),
    "actions": (np.float32, (ACTION_DIM,)),
    "executed_actions": (np.float32, (ACTION_DIM,)),
    "rewards": (np.float32, ()),
    "dones": (np.uint8, ()),
}


def _as_layout(**arrays) -> dict:
    return {k: np.asarray(v, dtype=_LAYOUT[k][0]) for k, v in arrays.items()}


def _check_shape(key: str, shape: tuple, dtype, t: int | None, where: str) -> int:
    want_dtype, trailing = _LAYOUT[key]
    if np.dtype(dtype) != np.dtype(want_dtype):
        raise DemoFormatError(f"{where}: {key} has dtype {np.dtype(dtype)}, expected {np.dtype(want_dtype)}")
    ok = len(shape) == 1 + len(trailing) and all(w is None or w == s for w, s in zip(trailing, shape[1:]))
    if not ok:
        want = "(T, " + ", ".join("*" if w is None else str(w) for w in trailing) + ")"
        raise DemoFormatError(f"{where}: {key} has shape {tuple(shape)}, expected {want.replace(', )', ')')}")
    if t is not None and shape[0] != t:
        raise DemoFormatError(f"{where}: {key} has {shape[0]} steps, but actions has {t}")
    return int(shape[0])


def _check_arrays(arrays: dict, where: str) -> None:
    t = _check_shape("actions", arrays["actions"].shape, arrays["actions"].dtype, None, where)
    if t == 0:
        raise DemoFormatError(f"{where}: a demo needs at least one step")
    for key, arr in arrays.items():
        _check_shape(key, arr.shape, arr.dtype, t, where)


def validate_demo_file(f: h5py.File, path: str = "") -> list[str]:
    """Check the layout of an open file; returns the demo names in index order, raises DemoFormatError."""
    where = path or f.filename
    if "data" not in f:
        raise DemoFormatError(f"{where}: no 'data' group (not a robomimic/LIBERO demo file?)")
    data = f["data"]
    missing = [a for a in DATA_ATTRS if a not in data.attrs]
    if missing:
        raise DemoFormatError(f"{where}: data is missing attributes {missing}")
    names = [k for k in data.keys() if k.startswith("demo_")]
    others = sorted(set(data.keys()) - set(names))
    if others:
        raise DemoFormatError(f"{where}: unexpected entries under data/: {others}")
    try:
        names.sort(key=_demo_index)
    except ValueError as e:
        raise DemoFormatError(f"{where}: demo names must be demo_<int>, got {names}") from e
    total = 0
    for name in names:
        grp = data[name]
        here = f"{where}:data/{name}"
        missing = [a for a in DEMO_ATTRS if a not in grp.attrs]
        if missing:
            raise DemoFormatError(f"{here} is missing attributes {missing}")
        for key in _LAYOUT:
            full = f"obs/{key}" if key in IMAGE_KEYS + ("state",) else key
            if full not in grp:
                raise DemoFormatError(f"{here} has no dataset {full}")
        t = _check_shape("actions", grp["actions"].shape, grp["actions"].dtype, None, here)
        for key in _LAYOUT:
            ds = grp[f"obs/{key}" if key in IMAGE_KEYS + ("state",) else key]
            _check_shape(key, ds.shape, ds.dtype, t, here)
        if int(grp.attrs["num_samples"]) != t:
            raise DemoFormatError(f"{here}: num_samples={int(grp.attrs['num_samples'])} but {t} steps stored")
        total += t
    if int(data.attrs["total"]) != total:
        raise DemoFormatError(f"{where}: data.attrs['total']={int(data.attrs['total'])} but demos hold {total} samples")
    return names


def _attr(v):
    # h5py gives numpy scalars and bytes; hand back plain python values.
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


class DemoFile:
    """A validated demo file opened for reading: index or iterate it to get `Demo`s lazily.

    with DemoFile(path) as demos:
        for demo in demos: ...               # one demo's arrays in memory at a time
        demos.attrs["env_args"]              # dict
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no demo file at {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise DemoFormatError(f"{self.path}: not a readable HDF5 file ({e})") from e
        try:
            self.names = validate_demo_file(self._file, str(self.path))
        except Exception:
            self._file.close()
            raise
        attrs = {k: _attr(v) for k, v in self._file["data"].attrs.items()}
        attrs["env_args"] = json.loads(attrs["env_args"])
        self.attrs = attrs

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int | str) -> Demo:
        name = i if isinstance(i, str) else self.names[i]
        grp = self._file["data"][name]
        return Demo(
            name=name,
            agentview_image=grp["obs/agentview_image"][()],
            wrist_image=grp["obs/wrist_image"][()],
            state=grp["obs/state"][()],
            actions=grp["actions"][()],
            executed_actions=grp["executed_actions"][()],
            rewards=grp["rewards"][()],
            dones=grp["dones"][()],
            attrs={k: _attr(v) for k, v in grp.attrs.items()},
        )

    def __iter__(self) -> Iterator[Demo]:
        for name in self.names:
            yield self[name]

    def sample_index(self) -> list[tuple[str, int]]:
        """(demo name, step) for every sample, for a training loader that draws single steps."""
        data = self._file["data"]
        return [(n, t) for n in self.names for t in range(int(data[n].attrs["num_samples"]))]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "DemoFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_demos(path: str | Path, only_success: bool = False) -> list[Demo]:
    """Every demo of a file in memory (small files; use DemoFile to stream large ones)."""
    with DemoFile(path) as demos:
        return [d for d in demos if d.success or not only_success]
