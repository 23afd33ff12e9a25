"""Episode videos: agentview | wrist frames side by side, written as H.264 mp4 by imageio-ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def side_by_side(obs: dict) -> np.ndarray:
    """(H, W, 3) agentview and wrist images -> one (H, 2W, 3) uint8 frame (agentview on the left).

    Wrist images of another height are shown top-aligned on black; an obs without a wrist camera
    gives the agentview frame alone.
    """
    agent = np.asarray(obs["agentview_image"], dtype=np.uint8)
    wrist = obs.get("wrist_image")
    if wrist is None:
        return agent.copy()
    wrist = np.asarray(wrist, dtype=np.uint8)
    height = max(agent.shape[0], wrist.shape[0])
    frame = np.zeros((height, agent.shape[1] + wrist.shape[1], 3), dtype=np.uint8)
    frame[: agent.shape[0], : agent.shape[1]] = agent
    frame[: wrist.shape[0], agent.shape[1] :] = wrist
    return frame


def write_mp4(path: str | Path, frames: list[np.ndarray], fps: float) -> Path:
    """Write uint8 (H, W, 3) frames as an mp4; odd sizes are padded by one black row/column
    because H.264 in yuv420p needs even dimensions."""
    import imageio.v2 as imageio  # imported here: only runs that write videos pay for it

    if not frames:
        raise ValueError("write_mp4 needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    with imageio.get_writer(path, fps=float(fps), codec="libx264", macro_block_size=1,
                            pixelformat="yuv420p", format="FFMPEG") as writer:
        for frame in frames:
            writer.append_data(np.pad(frame, pad) if any(p[1] for p in pad) else frame)
    return path
