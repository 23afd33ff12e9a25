"""The schema of the `accel` Hydra group: what every conf/accel/<name>.yaml inherits.

The base is the unaccelerated runner (everything off); a preset lists only what it changes, after
`defaults: [/schema/accel@_here_, _self_]`. The group stays flat (sweeps read `accel.keep_ratio=0.5`);
vla_accel.accel.config.AccelConfig.from_dict checks the values that need more than a type.
"""

from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, OmegaConf

from vla_accel.conf import store_schema

PRESET_DEFAULTS = ["/schema/accel@_here_", "_self_"]  # every preset's defaults list


@dataclass
class AccelPreset:
    name: str = MISSING  # the preset's own name (= its file name)
    method: Optional[str] = None  # token pruning method (vla_accel.accel.pruning); null = no pruning
    keep_ratio: Optional[float] = None  # visual tokens kept, in (0, 1]
    keep_tokens: Optional[int] = None  # absolute budget M~ instead of keep_ratio (set keep_ratio=null then)
    prune_layer: Optional[int] = None  # K: layers 0..K-1 see every token, layers K.. only the kept ones
    skip_layers: List[int] = field(default_factory=list)  # LLM layers never entered (explicit list) ...
    skip_ranking_file: Optional[str] = None  # ... or the num_drop least important layers of a layer_skip ranking
    skip_num_drop: int = 0
    head_cache_interval: int = 1  # diffusion head: recompute attention/MLP every N denoising steps (1 = off)
    # VLA-Cache token reuse (see vla_cache.yaml); excludes pruning. Any, not Optional[Dict]: OmegaConf cannot
    # add keys below a typed null dict (`accel=none +accel.reuse.max_static=100` would fail)
    reuse: Any = None
    params: Dict[str, Any] = field(default_factory=dict)  # the pruning method's own parameters


store_schema("accel", AccelPreset)


def preset_names() -> list[str]:
    """The packaged presets, conf/accel/<name>.yaml, sorted."""
    return sorted(p.name[: -len(".yaml")] for p in (files("vla_accel.conf") / "accel").iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    """conf/accel/<name>.yaml as Hydra composes it into the `accel` group: the schema's defaults with the
    file's values on top. Read without Hydra's global state, so it works inside a running Hydra app."""
    raw = OmegaConf.load(str(files("vla_accel.conf") / "accel" / f"{name}.yaml"))
    defaults = raw.pop("defaults", None)
    if defaults is None or list(defaults) != PRESET_DEFAULTS:
        # anything else would compose differently from the merge below
        raise ValueError(f"conf/accel/{name}.yaml: its defaults list must be {PRESET_DEFAULTS}, got {defaults}")
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(AccelPreset), raw))
