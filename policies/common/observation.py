"""Turn an env observation (unbatched or batched, docs/interfaces.md) into checked numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAMERA_KEYS = {"agentview": "agentview_image", "wrist": "wrist_image"}


@dataclass
class ParsedObs:
    images: dict[str, np.ndarray]  # camera name -> (B, H, W, 3) uint8
    instructions: list[str]  # B strings
    batched: bool


def as_uint8_image(image, name: str = "image") -> np.ndarray:
    """PIL image or array -> numpy uint8, no copy when it already is one."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        image = np.array(image.convert("RGB"))  # a writable copy
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8 (RGB 0..255), got {image.dtype}")
    return image


def check_image_batch(images: np.ndarray, name: str, expected_size: int | None) -> np.ndarray:
    """(B, H, W, 3) uint8 with H = W = expected_size when given."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3) or (B, H, W, 3), got {images.shape}")
    h, w = images.shape[1:3]
    if expected_size is not None and (h, w) != (expected_size, expected_size):
        raise ValueError(
            f"{name}: expected image size {expected_size}x{expected_size} (as trained), got {h}x{w}"
        )
    if min(h, w) < 8:
        raise ValueError(f"{name}: image too small, got {h}x{w}")
    return images


def check_instructions(instructions, batch: int) -> list[str]:
    if isinstance(instructions, str):
        instructions = [instructions]
    if isinstance(instructions, np.ndarray):  # e.g. a batched obs from a vectorised env
        instructions = instructions.tolist()
    if not isinstance(instructions, (list, tuple)):
        instructions = [instructions]
    instructions = list(instructions)
    for i, text in enumerate(instructions):
        if not isinstance(text, str):
            raise ValueError(f"instruction {i} must be a string, got {type(text).__name__}")
    if len(instructions) != batch:
        raise ValueError(f"got {len(instructions)} instructions for a batch of {batch} images")
    for i, text in enumerate(instructions):
        if not text.strip():
            raise ValueError(f"instruction {i} is empty; a task instruction is required")
    return instructions


def parse_obs(obs: dict, cameras: list[str], expected_size: int | None) -> ParsedObs:
    """obs: the env's dict (images (H, W, 3), instruction str) or a batched one (images (B, H, W, 3),
    instruction list of B strings)."""
    if not isinstance(obs, dict):
        raise ValueError(f"obs must be a dict, got {type(obs).__name__}")
    for cam in cameras:
        if CAMERA_KEYS[cam] not in obs:
            raise ValueError(f"obs lacks {CAMERA_KEYS[cam]!r}; keys: {sorted(obs)}")
    if "instruction" not in obs:
        raise ValueError(f"obs lacks 'instruction'; keys: {sorted(obs)}")
    first = as_uint8_image(obs[CAMERA_KEYS[cameras[0]]], CAMERA_KEYS[cameras[0]])
    batched = first.ndim == 4
    images = {}
    for cam in cameras:
        key = CAMERA_KEYS[cam]
        arr = as_uint8_image(obs[key], key)
        arr = arr if batched else arr[None]
        images[cam] = check_image_batch(arr, key, expected_size)
    batch = images[cameras[0]].shape[0]
    if any(a.shape[0] != batch for a in images.values()):
        raise ValueError("all cameras must have the same batch size")
    instr = obs["instruction"]
    if batched and isinstance(instr, str):
        raise ValueError("batched obs need a list of instructions, one per row")
    return ParsedObs(images, check_instructions(instr, batch), batched)
