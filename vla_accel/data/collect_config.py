"""The schema of the `collect` section of `vla-accel collect` (conf/collect/*.yaml): keys, types, defaults.

Hydra checks the types at compose; __post_init__ (run by ``validated(CollectSchema, cfg.collect)``)
checks what types cannot say. `compression` is checked by hdf5_io.DemoWriter, which lists the valid ones.
"""

from dataclasses import dataclass
from typing import Optional

from vla_accel.conf import store_schema

INIT_SPLITS = ("train", "eval")


@dataclass
class CollectSchema:
    n_demos_per_task: int = 50
    n_init_states: int = 50  # init_split=eval only
    init_split: str = "train"  # train | eval
    noise_std: float = 0.1
    keep_failures: bool = False
    output: str = "demos_{suite}.hdf5"  # {suite} is filled in
    overwrite: bool = False
    compression: str = "gzip"  # gzip | lzf | none
    compression_level: int = 4
    seed: int = 0
    max_steps: Optional[int] = None  # null = the task's own horizon
    progress: bool = True

    def __post_init__(self) -> None:
        if self.n_demos_per_task < 1:
            raise ValueError(f"collect.n_demos_per_task must be a positive integer, got {self.n_demos_per_task!r}")
        if self.n_init_states < 1:
            raise ValueError(f"collect.n_init_states must be a positive integer, got {self.n_init_states!r}")
        if self.noise_std < 0:
            raise ValueError(f"collect.noise_std must be >= 0, got {self.noise_std}")
        if self.init_split not in INIT_SPLITS:
            raise ValueError(f"collect.init_split must be 'train' or 'eval', got {self.init_split!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"collect.max_steps must be null or a positive integer, got {self.max_steps!r}")


store_schema("collect", CollectSchema)
