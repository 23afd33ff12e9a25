"""The typed schemas of the command sections (vla_accel.conf.register_configs): Hydra rejects a value of the
wrong type at compose, naming the key, before anything runs; the schemas' defaults are the YAML's."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
from fixtures.fakes import compose_config
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from vla_accel.accel.preset_config import AccelPreset
from vla_accel.conf import validated
from vla_accel.data.collect_config import CollectSchema
from vla_accel.harness.eval_config import EvalSchema
from vla_accel.policies.train_config import TrainSchema
from vla_accel.runtime.serving.serve_config import ServeSchema
from vla_accel.tools.bench_config import BenchSchema
from vla_accel.tools.calibrate_config import CalibrateSchema
from vla_accel.tools.sweep.sweep_config import SweepSchema

TRAIN = ["data.paths=[demos.hdf5]"]  # train.yaml's one mandatory value
# (config name, section, its schema, what the command line must add to compose)
SECTIONS = [("eval", "eval", EvalSchema, []), ("bench", "bench", BenchSchema, []),
            ("collect", "collect", CollectSchema, []), ("calibrate", "calibrate", CalibrateSchema, []),
            ("sweep", "sweep", SweepSchema, []), ("serve", "serve", ServeSchema, []),
            ("train", "train", TrainSchema, TRAIN), ("eval", "accel", AccelPreset, ["accel=fastv"])]


def _int_fields(schema: type) -> list[str]:
    """The fields typed int or Optional[int]."""
    hints = typing.get_type_hints(schema)
    return [f.name for f in dataclasses.fields(schema) if hints[f.name] in (int, typing.Optional[int])]


@pytest.mark.parametrize("config, override, key", [
    ("eval", "eval.n_episodes=abc", "eval.n_episodes"), ("bench", "bench.keep_ratios=[half]", "bench.keep_ratios"),
    ("collect", "collect.noise_std=abc", "collect.noise_std"), ("calibrate", "calibrate.seed=1.5", "calibrate.seed"),
    ("sweep", "sweep.bench=maybe", "sweep.bench"), ("serve", "serve.port=abc", "serve.port"),
    ("train", "train.lr=fast", "train.lr"), ("eval", "accel.keep_ratio=half", "accel.keep_ratio"),
    ("bench", "bench.skip_layers=[[x]]", "bench.skip_layers"),
])
def test_a_wrong_type_fails_at_compose_naming_the_key(config, override, key):
    with pytest.raises(ConfigCompositionException, match=f"Error merging override {re.escape(override)}") as e:
        compose_config(config, [*(TRAIN if config == "train" else []), override])
    assert f"full_key: {key}" in str(e.value.__cause__)


@pytest.mark.parametrize("config, section, schema, extra", SECTIONS, ids=[s[1] for s in SECTIONS])
def test_true_for_an_integer_is_rejected_for_every_integer_field(config, section, schema, extra):
    """Hydra's rule for an int field: true/false are not integers (no more `eval` taking true as 1)."""
    keys = _int_fields(schema)
    assert keys, schema
    for key in keys:
        with pytest.raises(ConfigCompositionException, match=f"{section}.{key}=true"):
            compose_config(config, [*extra, f"{section}.{key}=true"])
        if schema is not AccelPreset:  # a section built without the schema: the same rule, the same key
            with pytest.raises(ValueError, match=f"'True' of type 'bool' could not be converted to Integer\n"
                                                 f"    full_key: {key}"):
                validated(schema, {key: True})


@pytest.mark.parametrize("config, key", [("bench", "bench.skip_layers"), ("sweep", "sweep.skip_layers")])
def test_true_among_nested_layer_lists_is_rejected_too(config, key):
    """OmegaConf lets a bool pass the elements of a List[List[int]]; the checks keep Hydra's rule there."""
    cfg = compose_config(config, [f"{key}=[[1,true]]"])  # composes: the gap in OmegaConf's element check
    if config == "bench":
        with pytest.raises(ValueError, match=r"bench.skip_layers: each entry is a list of layer indices, got \[1, True\]"):
            validated(BenchSchema, cfg.bench)
    else:
        from vla_accel.tools.sweep.spec import SweepSpec

        node = OmegaConf.masked_copy(cfg.sweep, [k for k in cfg.sweep if k != "output_dir"])
        with pytest.raises(ValueError, match="distinct layer indices >= 0"):
            SweepSpec.from_config(node)


@pytest.mark.parametrize("config, section, schema, extra", SECTIONS[:-1], ids=[s[1] for s in SECTIONS[:-1]])
def test_the_schema_defaults_are_the_default_yaml_values(config, section, schema, extra):
    composed = OmegaConf.to_container(compose_config(config, extra)[section])
    assert OmegaConf.to_container(OmegaConf.structured(schema)) == composed
    assert OmegaConf.get_type(compose_config(config, extra)[section]) is schema  # the YAML uses the schema


def test_validated_runs_the_range_checks_and_ignores_keys_it_does_not_know():
    section = compose_config("eval", ["+eval.note=hello"]).eval  # the commands always ignored such keys
    assert validated(EvalSchema, section).n_episodes == 10
    with pytest.raises(ValueError, match="eval.n_episodes must be a positive integer, got 0"):
        validated(EvalSchema, compose_config("eval", ["eval.n_episodes=0"]).eval)
    assert validated(EvalSchema, {"n_episodes": "3"}).n_episodes == 3  # Hydra's rule: a numeric string converts


def test_a_type_error_on_the_command_line_stops_before_anything_runs(monkeypatch, capsys):
    from vla_accel.cli import main
    from vla_accel.tools import bench

    monkeypatch.setattr(bench, "run", lambda cfg: pytest.fail("the bench ran"))
    with pytest.raises(SystemExit) as e:
        main(["bench", "bench.rounds=true", "hydra.run.dir=."])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "Error merging override bench.rounds=true" in err and "full_key: bench.rounds" in err
