"""The accelerator core: configuration, `accelerate()`, the layer-by-layer runner, the pruning methods,
layer skipping, the DiT feature cache, VLA-Cache's token reuse, attention probes and the FLOPs model.

Imports only `vla_accel.policies` and `vla_accel.measure` (never the harness, runtime or tools)."""
