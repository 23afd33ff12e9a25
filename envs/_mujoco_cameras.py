"""Fast offscreen rendering of named MuJoCo cameras into upright uint8 frames."""

from __future__ import annotations

import mujoco
import numpy as np

from vla_accel.envs._geometry import rotate_180

# Effects that cost time in software (EGL/OSMesa) rendering and carry no task information.
_SLOW_FLAGS = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX)


class CameraRenderer:
    """One `mujoco.Renderer` of size (H, W) = (image_size, image_size) shared by several cameras.

    Shadows, reflections, skybox and anti-aliasing are off. `upside_down` names cameras whose model frame is rolled half a turn (their "up" axis points down in
    the world): their frames are turned 180 degrees so that row 0 is the top of the picture.
    """

    def __init__(self, model: mujoco.MjModel, image_size: int, upside_down: frozenset[str] = frozenset()):
        # The offscreen framebuffer must be at least as large as the frame.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, image_size)
        # No multisample anti-aliasing: Meta-World asks for 4 samples, which costs ~40% of a frame in
        # software rendering (measured 17.4 -> 10.7 ms per 128x128 frame) and adds nothing at these sizes.
        model.vis.quality.offsamples = 0
        self._model = model
        self._renderer = mujoco.Renderer(model, height=image_size, width=image_size)
        for flag in _SLOW_FLAGS:
            self._renderer.scene.flags[flag] = 0  # scene flags persist across update_scene/render
        self._upside_down = upside_down

    def check_camera(self, name: str) -> str:
        names = [self._model.camera(i).name for i in range(self._model.ncam)]
        if name not in names:
            raise ValueError(f"unknown camera {name!r}; this model has: {', '.join(names)}")
        return name

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """(H, W, 3) uint8, upright."""
        self._renderer.update_scene(data, camera=camera)
        frame = self._renderer.render()  # mujoco.Renderer already converts OpenGL's bottom-up rows
        return rotate_180(frame) if camera in self._upside_down else frame.copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


__all__ = ["CameraRenderer"]
