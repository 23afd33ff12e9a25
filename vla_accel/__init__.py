"""vla-accel: run Vision-Language-Action robot policies fast without losing what they can do.

    from vla_accel import accelerate, AccelConfig

The package's rooms, lowest first (each imports only the rooms below it; tests/test_layering.py):
measure (timers, statistics) and envs (the simulated suites); policies (the VLA policies); accel (the
accelerator core); runtime (call styles, episodes, control loop, serving, the torch-free client);
harness (rollouts, eval, results); data (demo files, collection); tools (bench, calibrate, sweep,
plots); cli (the `vla-accel` command). The public names are imported on first use, so that
`vla_accel.runtime.client` stays free of torch.
"""

__version__ = "0.1.0"

_PUBLIC = {"accelerate": "vla_accel.accel.accelerate", "AccelConfig": "vla_accel.accel.config"}
__all__ = ["AccelConfig", "accelerate"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'vla_accel' has no attribute {name!r}")
