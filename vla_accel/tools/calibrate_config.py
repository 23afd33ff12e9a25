"""The schema of the `calibrate` section of `vla-accel calibrate` (conf/calibrate.yaml).

Hydra checks the types at compose; __post_init__ (run by calibrate.check_calibrate_cfg) checks what
types cannot say. `demos` is a path or a list of paths, a union OmegaConf cannot type: Any here, and
calibrate.demo_paths checks it.
"""

from dataclasses import dataclass
from typing import Any, Optional

from vla_accel.conf import store_schema


@dataclass
class CalibrateSchema:
    demos: Any = None  # an HDF5 demo file or a list of them; null = the env's first frames
    n_samples: int = 64
    seed: int = 0
    batch_size: int = 1
    output: str = "layer_ranking.json"
    suggest_num_drop: Optional[int] = None  # null = num_layers // 8

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"calibrate.n_samples must be an integer >= 1, got {self.n_samples!r}")
        if self.batch_size < 1:
            raise ValueError(f"calibrate.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.suggest_num_drop is not None and self.suggest_num_drop < 1:
            raise ValueError(f"calibrate.suggest_num_drop must be null or an integer >= 1, got {self.suggest_num_drop!r}")
        if not self.output.endswith(".json"):
            raise ValueError(f"calibrate.output must name a .json file, got {self.output!r}")


store_schema("calibrate", CalibrateSchema)
