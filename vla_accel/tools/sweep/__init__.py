"""Budget sweeps: accel presets x keep ratios x layer-skip settings on the same episodes, run as Hydra
multiruns of `vla-accel eval` (basic / joblib / Ray launchers), timed by `vla-accel bench`, aggregated
into a CSV, a Markdown table and Pareto plots. See vla_accel.tools.sweep.run for the command."""

from vla_accel.tools.sweep.spec import BASELINE, MultirunPart, SweepPoint, SweepSpec

__all__ = ["BASELINE", "MultirunPart", "SweepPoint", "SweepSpec"]
