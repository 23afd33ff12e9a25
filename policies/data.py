"""Demonstrations (HDF5, docs/interfaces.md) -> training samples, and the image augmentations.

Every time step of every demo is a sample: the camera images at t, the instruction, and the clean
expert actions a[t : t + chunk_size] (padded with the demo's last action past its end, as LeRobot and
CogACT do), normalised with OpenVLA's q01/q99 bounds of that dataset. A dataset is the HDF5 files of one
`unnorm_key`, the file's `data.attrs["suite"]` (else the file name): the statistics of all their actions
together go into the checkpoint's `norm_stats`. All frames are held in memory (49 KB per 128 px RGB frame and camera).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from vla_accel.policies.common.action_tokenizer import compute_norm_stats, normalize_actions
from vla_accel.policies.common.observation import CAMERA_KEYS

AUGMENTATIONS = ("none", "random_crop", "random_shift")


@dataclass
class Batch:
    images: dict[str, torch.Tensor]  # camera -> (B, H, W, 3) uint8
    instructions: list[str]
    actions: torch.Tensor  # (B, chunk, A) normalised to [-1, 1] on the masked dims


class DemoDataset:
    def __init__(self, paths: list[str | Path], cameras: list[str], chunk_size: int = 1,
                 only_successful: bool = True) -> None:
        if not paths:
            raise ValueError("no demonstration files given")
        self.cameras = cameras
        self.chunk_size = chunk_size
        chunks, instr_idx = [], []
        self.instructions: list[str] = []
        self.norm_stats: dict[str, dict] = {}
        # Several files of one suite (more demos collected later, another seed) are one dataset, normalised
        # with the statistics of all their actions together. The actions are read first; the frames then go
        # straight into one preallocated array per camera (a list of per-demo arrays concatenated at the
        # end would hold every frame twice: 2 x 4.8 GB for 1000 two-camera demos of 128 px).
        read: list[tuple[Path, str, str, str, np.ndarray]] = []  # (file, demo, key, instruction, actions)
        for path in map(Path, paths):
            if not path.is_file():
                raise FileNotFoundError(f"demonstration file not found: {path}")
            with h5py.File(path, "r") as f:
                if "data" not in f:
                    raise ValueError(f"{path}: no 'data' group (expected the robomimic/LIBERO layout)")
                key = str(f["data"].attrs.get("suite", path.stem))
                names = [k for k in sorted(f["data"], key=_demo_order)
                         if not only_successful or bool(f["data"][k].attrs.get("success", True))]
                if not names:
                    raise ValueError(f"{path}: no (successful) demos")
                read += [(path, k, key, str(f["data"][k].attrs["instruction"]),
                          np.asarray(f["data"][k]["actions"], dtype=np.float32)) for k in names]
        for key in dict.fromkeys(r[2] for r in read):
            raw = [acts for _, _, k, _, acts in read if k == key]
            self.norm_stats[key] = compute_norm_stats(np.concatenate(raw), n_trajectories=len(raw))
        for _, _, key, instruction, acts in read:
            if instruction not in self.instructions:
                self.instructions.append(instruction)
            chunks.append(_chunks(normalize_actions(acts, self.norm_stats[key]["action"]), chunk_size))
            instr_idx += [self.instructions.index(instruction)] * len(acts)
        self.images = self._read_frames(read, cameras)  # camera -> (N, H, W, 3)
        self.actions = np.concatenate(chunks)  # (N, chunk, A)
        self.instruction_index = np.asarray(instr_idx)
        self.image_size = self.images[cameras[0]].shape[1]

    @staticmethod
    def _read_frames(read: list, cameras: list[str]) -> dict[str, np.ndarray]:
        n = sum(len(r[4]) for r in read)
        images: dict[str, np.ndarray] = {}
        start, open_path, f = 0, None, None
        try:
            for path, name, _, _, acts in read:
                if path != open_path:
                    if f is not None:
                        f.close()
                    f, open_path = h5py.File(path, "r"), path
                for cam in cameras:
                    frames = f["data"][name]["obs"][CAMERA_KEYS[cam]]
                    if len(frames) != len(acts):
                        raise ValueError(f"{path}: {name} has {len(frames)} {cam} frames for {len(acts)} actions")
                    if cam not in images:
                        images[cam] = np.empty((n, *frames.shape[1:]), dtype=np.uint8)
                    frames.read_direct(images[cam], dest_sel=np.s_[start : start + len(acts)])
                start += len(acts)
        finally:
            if f is not None:
                f.close()
        return images

    def __len__(self) -> int:
        return len(self.actions)

    def batch(self, idx: np.ndarray) -> Batch:
        return Batch(
            images={c: torch.from_numpy(self.images[c][idx]) for c in self.cameras},
            instructions=[self.instructions[i] for i in self.instruction_index[idx]],
            actions=torch.from_numpy(self.actions[idx]),
        )


def _demo_order(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)


def _chunks(actions: np.ndarray, h: int) -> np.ndarray:
    """(T, A) -> (T, h, A): a[t : t + h], repeating the last action past the end."""
    t = len(actions)
    idx = np.minimum(np.arange(t)[:, None] + np.arange(h)[None], t - 1)
    return actions[idx]


def augment(x: torch.Tensor, mode: str, generator: torch.Generator, crop_area: float = 0.9,
            shift_pad: int = 4) -> torch.Tensor:
    """x (B, 3, H, W) float in [0, 1] -> augmented, same size.
    random_crop: OpenVLA's recipe, a random square crop of `crop_area` of the image, resized back.
    random_shift: DrQ's, pad by `shift_pad` (edge replicate) and crop back at a random offset."""
    if mode == "none":
        return x
    b, _, h, w = x.shape
    if mode == "random_crop":
        side = math.sqrt(crop_area)
        ch, cw = round(h * side), round(w * side)
        tops = torch.randint(0, h - ch + 1, (b,), generator=generator).tolist()
        lefts = torch.randint(0, w - cw + 1, (b,), generator=generator).tolist()
        crops = [x[i : i + 1, :, t : t + ch, l : l + cw] for i, (t, l) in enumerate(zip(tops, lefts))]
        return F.interpolate(torch.cat(crops), size=(h, w), mode="bilinear", align_corners=False,
                             antialias=True)
    if mode == "random_shift":
        padded = F.pad(x, (shift_pad,) * 4, mode="replicate")
        offs = torch.randint(0, 2 * shift_pad + 1, (b, 2), generator=generator).tolist()
        return torch.cat([padded[i : i + 1, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs)])
    raise ValueError(f"unknown augmentation {mode!r}; valid: {AUGMENTATIONS}")
