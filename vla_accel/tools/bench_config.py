"""The schema of the `bench` section of `vla-accel bench` (conf/bench.yaml): its keys, types and defaults.

Hydra checks the types at compose; __post_init__ (run by ``validated(BenchSchema, cfg.bench)``) checks
what types cannot say.
"""

from dataclasses import dataclass, field
from typing import List, Optional

from vla_accel.conf import store_schema


@dataclass
class BenchSchema:
    methods: List[str] = field(default_factory=lambda: [
        "vla_pruner", "fastv", "divprune", "efficientvla_tokens", "vla_cache"])  # conf/accel/ presets
    keep_ratios: List[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    prune_layer: Optional[int] = None  # K for every pruning method; null = each preset's own
    skip_layers: List[List[int]] = field(default_factory=list)  # extra configs, each a list of skipped layers
    head_cache_intervals: List[int] = field(default_factory=list)
    rounds: int = 10
    warmup_rounds: int = 3
    n_episodes: int = 2
    demos: Optional[str] = None
    seed: int = 0
    threads: Optional[int] = None  # torch threads; null = torch's own default
    progress: bool = True

    def __post_init__(self) -> None:
        for key in ("rounds", "n_episodes"):
            if getattr(self, key) < 1:
                raise ValueError(f"bench.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.warmup_rounds < 0:
            raise ValueError(f"bench.warmup_rounds must be an integer >= 0, got {self.warmup_rounds!r}")
        for r in self.keep_ratios:
            if not 0 < r <= 1:
                raise ValueError(f"bench.keep_ratios must lie in (0, 1], got {r!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"bench.threads must be null (torch's default) or a positive integer, got {self.threads!r}")
        for layers in self.skip_layers:
            # OmegaConf checks the elements of a nested List[List[int]] by isinstance only, where a bool
            # passes as 1 or 0; every other int field rejects true/false, so these do too
            if any(isinstance(x, bool) for x in layers):
                raise ValueError(f"bench.skip_layers: each entry is a list of layer indices, got {list(layers)!r}")


store_schema("bench", BenchSchema)
