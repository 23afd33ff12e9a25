"""The schema of the `sweep` section of `vla-accel sweep` (conf/sweep/*.yaml): its keys, types and the
defaults of conf/sweep/main.yaml.

Hydra checks the types at compose; :func:`typed` applies the same rules to a plain dict (a Python
caller of SweepSpec.from_config). SweepSpec.__post_init__ checks what types cannot say.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import OmegaConf

from vla_accel.conf import store_schema
from vla_accel.harness.cluster_config import RaySchema


@dataclass
class SweepSchema:
    methods: List[str] = field(default_factory=lambda: ["vla_pruner", "fastv", "efficientvla_combo"])  # accel presets
    keep_ratios: List[float] = field(default_factory=lambda: [0.25])
    skip_layers: List[List[int]] = field(default_factory=lambda: [[]])  # [[]] = no layer skipping
    prune_layer: Optional[int] = 2  # K for every pruning preset (null = the preset's own)
    launcher: str = "joblib"  # basic | joblib | ray
    n_jobs: Optional[int] = 2  # joblib: parallel processes (null = every core)
    ray_address: Optional[str] = None  # the same as ray.address (kept: the README documented it first)
    ray: RaySchema = field(default_factory=RaySchema)  # launcher=ray: cluster, token, resources per job
    bench: bool = True
    output_dir: Optional[str] = None  # null = multirun/sweep/<date>/<time>
    eval_overrides: List[str] = field(default_factory=lambda: ["env=goal", "policy=cogact_goal", "eval.n_episodes=2"])


store_schema("sweep", SweepSchema)

FIELDS = tuple(f.name for f in dataclasses.fields(SweepSchema))


def typed(values: dict) -> dict:
    """`values` with the schema's keys converted and checked by its types, as Hydra does at compose
    (OmegaConf's ValidationError, a ValueError naming the key, otherwise). Only the given keys come
    back, so SweepSpec keeps its own defaults; keys the schema lacks come back unchanged."""
    given = {k: v for k, v in values.items() if k in FIELDS}
    checked = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(SweepSchema), given))
    return {k: checked[k] if k in FIELDS else v for k, v in values.items()}
