"""The `vla-accel` commands' Hydra configs (these YAML files) and the registration of their typed schemas.

Every command section (`eval:`, `bench:`, `collect:`, `calibrate:`, `sweep:`, `serve:`, `train:`) and
every accel preset lists a dataclass first in its defaults (`- /schema/<name>@...`), so Hydra checks
each value's type when it composes, before anything runs. The dataclasses live next to the code they
configure (SCHEMA_MODULES); importing one of those modules stores its schema (:func:`store_schema`).
That is what lets a process that only imports a command's module -- a joblib worker unpickling the
eval task -- compose; everything else calls :func:`register_configs` before composing.

This package imports no room of vla_accel at import time (the accel room reads its presets from here).
"""

from __future__ import annotations

import dataclasses
import importlib

from omegaconf import OmegaConf

SCHEMA_GROUP = "schema"  # the Hydra config group the YAML files name: `/schema/eval@_here_`
SCHEMA_MODULES = (
    "vla_accel.accel.preset_config",
    "vla_accel.harness.eval_config",
    "vla_accel.runtime.serving.serve_config",
    "vla_accel.data.collect_config",
    "vla_accel.tools.bench_config",
    "vla_accel.tools.calibrate_config",
    "vla_accel.tools.sweep.sweep_config",
    "vla_accel.policies.train_config",
)


def store_schema(name: str, schema: type) -> None:
    """Put `schema` in Hydra's ConfigStore as `schema/<name>` (storing again replaces: idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=SCHEMA_GROUP, name=name, node=schema)


def register_configs() -> None:
    """Store every command's schema; call before Hydra composes a config of this package."""
    for module in SCHEMA_MODULES:
        importlib.import_module(module)  # each stores its own schema when first imported


def validated(schema: type, section):
    """`section` (a DictConfig or a dict) as an instance of the dataclass `schema`, whose __post_init__
    runs the checks types cannot express (ranges, cross-field rules).

    A section composed through the schema is already typed; one built without it (a test's dict, a
    Python caller) gets its types checked here by the same rules. Keys the schema lacks (`+eval.x=1`)
    are ignored, as the commands always ignored them.
    """
    section = section if OmegaConf.is_config(section) else OmegaConf.create(section)
    names = [f.name for f in dataclasses.fields(schema) if f.init and f.name in section]
    typed = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.masked_copy(section, names))
    return OmegaConf.to_object(typed)

