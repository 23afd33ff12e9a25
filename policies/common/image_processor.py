"""Images (B, H, W, 3) uint8 -> pixel values (B, 3 * n_encoders, S, S) float, OpenVLA's layout.

Steps: [0, 1] floats; optional centre crop keeping `crop_scale` of the area (OpenVLA evaluates with a
centre crop of 0.9 area when it was trained with random-crop augmentation); bilinear resize to the
encoders' resolution S ("resize-naive"; bilinear for our checkpoints, bicubic for OpenVLA's, whose
preprocessor config says so; torch's antialiased kernels, which differ from PIL's in the last bits);
per-encoder mean/std; encoders stacked on the channel axis.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


INTERPOLATIONS = ("bilinear", "bicubic")


def crop_resize(x: torch.Tensor, size: int, crop_scale: float = 1.0, mode: str = "bilinear") -> torch.Tensor:
    """x (B, 3, H, W) float -> centre crop of `crop_scale` area, resized to (B, 3, size, size)."""
    if crop_scale < 1.0:
        h, w = x.shape[-2:]
        side = math.sqrt(crop_scale)
        ch, cw = max(1, round(h * side)), max(1, round(w * side))
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., top : top + ch, left : left + cw]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
    return x


class ImageProcessor:
    def __init__(self, image_size: int, means: list[list[float]], stds: list[list[float]],
                 crop_scale: float = 1.0, interpolation: str = "bilinear") -> None:
        if not 0.1 <= crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in [0.1, 1], got {crop_scale}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
        self.interpolation = interpolation
        if len(means) != len(stds) or not means:
            raise ValueError("need one mean and one std per encoder")
        self.image_size = image_size
        self.means = means
        self.stds = stds
        self.crop_scale = crop_scale

    def to_float(self, images: np.ndarray | torch.Tensor, device=None) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
        x = torch.as_tensor(images, device=device)
        return x.permute(0, 3, 1, 2).float().div_(255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) in [0, 1] -> (B, 3 * n_encoders, S, S)."""
        outs = []
        for mean, std in zip(self.means, self.stds):
            m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            outs.append((x - m) / s)
        return torch.cat(outs, dim=1)

    def __call__(self, images, device=None) -> torch.Tensor:
        x = crop_resize(self.to_float(images, device), self.image_size, self.crop_scale, self.interpolation)
        return self.normalize(x)

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "means": self.means, "stds": self.stds,
                "crop_scale": self.crop_scale, "interpolation": self.interpolation}
