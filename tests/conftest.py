import os

# Headless MuJoCo rendering; EGL (Mesa) is the fastest software path on a CPU-only machine.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

# Shared fixtures (tests/fixtures/), available to every test by name.
pytest_plugins = ["fixtures.threads", "fixtures.fakes"]
