from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fixtures.fakes import compose_config

import vla_accel.conf
from vla_accel.accel.config import AccelConfig, HeadCacheConfig, LayerSkipConfig, TokenPruningConfig, resolve_plan
from vla_accel.accel.preset_config import load_preset, preset_names
from vla_accel.accel.pruning import METHODS

ACCEL_DIR = Path(vla_accel.conf.__file__).parent / "accel"

# Every preset's composed `accel` group as it was when each file still listed all eleven keys (before
# they inherited the AccelPreset schema): the inheritance must not change one value. (Except fastv's and
# vla_pruner's prune_layer, 3 -> 2 since: each paper's K in the convention of TokenPruningConfig.)
_OFF = {"name": "none", "method": None, "keep_ratio": None, "keep_tokens": None, "prune_layer": None,
        "skip_layers": [], "skip_ranking_file": None, "skip_num_drop": 0, "head_cache_interval": 1,
        "reuse": None, "params": {}}
_PRUNING = {"keep_ratio": 0.5}
COMPOSED_BEFORE = {
    "none": _OFF,
    "divprune": {**_OFF, **_PRUNING, "name": "divprune", "method": "divprune", "prune_layer": 0},
    "efficientvla_tokens": {**_OFF, **_PRUNING, "name": "efficientvla_tokens", "method": "efficientvla_tokens",
                            "prune_layer": 3, "params": {"k_key": 4, "alpha": 0.5}},
    "fastv": {**_OFF, **_PRUNING, "name": "fastv", "method": "fastv", "prune_layer": 2},
    "efficientvla_combo": {**_OFF, "name": "efficientvla_combo", "method": "vla_pruner", "keep_ratio": 0.25,
                           "prune_layer": 2, "skip_layers": [4, 5], "head_cache_interval": 5,
                           "params": {"window": 3, "gamma": 0.8, "semantic_queries": "all",
                                      "temporal_order": "newest_first", "action_layer": None}},
    "random": {**_OFF, **_PRUNING, "name": "random", "method": "random", "prune_layer": 0, "params": {"seed": 0}},
    "text_guided": {**_OFF, **_PRUNING, "name": "text_guided", "method": "text_guided", "prune_layer": 3,
                    "params": {"recycle_tokens": 0}},  # fmt: skip
    "uniform": {**_OFF, **_PRUNING, "name": "uniform", "method": "uniform", "prune_layer": 0},
    "vla_cache": {**_OFF, "name": "vla_cache", "reuse": {"static_threshold": 0.996, "max_static": 150,
                                                         "num_relevant": 100, "relevance_layer": None}},
    "vla_pruner": {**_OFF, **_PRUNING, "name": "vla_pruner", "method": "vla_pruner", "prune_layer": 2,
                   "params": {"window": 3, "gamma": 0.8, "semantic_queries": "all",
                              "temporal_order": "newest_first", "action_layer": None}},
}
# The seed papers' presets, added after the base existed (their composed values, for the same checks).
COMPOSED_BEFORE.update({
    "fastervlm": {**_OFF, "name": "fastervlm", "method": "fastervlm", "keep_ratio": 0.25, "prune_layer": 0,
                  "params": {"encoder_layer": -1, "encoder": 0}},
    "vtc_cls": {**_OFF, "name": "vtc_cls", "method": "vtc_cls", "keep_ratio": 0.25, "prune_layer": 0,
                "params": {"start_layer": -4, "encoder": 0}},
    "todre": {**_OFF, "name": "todre", "method": "todre", "keep_ratio": 0.05, "prune_layer": 0,
              "params": {"relevance_keep": 0.5, "relevance_layer": None}},
    "feather": {**_OFF, "name": "feather", "method": "feather", "keep_ratio": 0.09,
                "params": {"stride": 3, "second_layer": None, "rope_free": True}},
    "hiprune": {**_OFF, "name": "hiprune", "method": "hiprune", "keep_ratio": 0.333, "prune_layer": 0,
                "params": {"alpha": 0.1, "object_layer": 0.375, "score": "received", "encoder": 0}},
})
# Issue 20's presets: TransPrune, and the adaptive-budget wrapper (ADP's motion gate over text_guided).
COMPOSED_BEFORE.update({
    "transprune": {**_OFF, "name": "transprune", "method": "transprune", "keep_ratio": 0.125,
                   "params": {"later_layers": None, "schedule": "released", "iga_weight": 0.5}},
    "adaptive": {**_OFF, "name": "adaptive", "method": "adaptive", "keep_ratio": 0.75,
                 "params": {"base": "text_guided", "base_params": {}, "mode": "adp", "fine_keep_ratio": 1.0,
                            "window": 2, "threshold": 0.4, "delta_threshold": 0.1}},
})


@pytest.mark.parametrize("app", ["eval", "serve"])
def test_every_preset_composes_exactly_as_before_the_base(app):
    assert preset_names() == sorted(COMPOSED_BEFORE)
    for name, before in COMPOSED_BEFORE.items():
        assert OmegaConf.to_container(compose_config(app, [f"accel={name}"]).accel) == before, name
        assert load_preset(name) == before, name  # what load_accel_config and the sweep read


def test_a_preset_lists_only_what_differs_from_the_base():
    for path in ACCEL_DIR.glob("*.yaml"):
        raw = OmegaConf.to_container(OmegaConf.load(path))
        assert raw.pop("defaults") == ["/schema/accel@_here_", "_self_"], path.name
        assert all(_OFF[k] != v for k, v in raw.items() if k != "name"), path.name


def test_every_method_has_a_config_file_that_builds():
    names = {p.stem for p in ACCEL_DIR.glob("*.yaml")}
    assert set(METHODS) | {"none"} <= names
    for path in ACCEL_DIR.glob("*.yaml"):
        d = load_preset(path.stem)
        cfg = AccelConfig.from_dict(d)
        assert d["name"] == path.stem
        if path.stem == "none":
            assert cfg.is_off
        elif path.stem == "vla_cache":
            assert cfg.pruning is None and cfg.reuse.static_threshold == 0.996 and cfg.reuse.max_static == 150
            assert resolve_plan(cfg, 32).relevance_layer == 15
        elif path.stem == "efficientvla_combo":  # the one preset that combines: tokens + layers + head cache
            assert cfg.pruning.method == "vla_pruner" and cfg.layer_skip.layers == (4, 5)
            assert cfg.head_cache.interval == 5
            resolve_plan(cfg, 8)  # the 8-layer policy it was calibrated on
        else:
            assert cfg.pruning.method == d["method"] and cfg.layer_skip is None and cfg.head_cache is None
            resolve_plan(cfg, 32)  # binds to a Llama-2-7B-sized model


def test_budget_from_ratio_or_tokens():
    assert TokenPruningConfig("fastv", keep_ratio=0.125).budget(256) == 32
    assert TokenPruningConfig("fastv", keep_ratio=0.001).budget(256) == 1
    assert TokenPruningConfig("fastv", keep_tokens=56).budget(256) == 56
    assert TokenPruningConfig("fastv", keep_ratio=1.0).budget(256) == 256


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="fastv", keep_ratio=0.0), r"keep_ratio must be in \(0, 1\]"),
        (dict(method="fastv", keep_ratio=1.5), r"keep_ratio must be in \(0, 1\]"),
        (dict(method="fastv", keep_ratio=-0.5), r"keep_ratio must be in \(0, 1\]"),
        (dict(method="fastv", keep_ratio=0.5, keep_tokens=10), "not both"),
        (dict(method="fastv"), "one of keep_ratio or keep_tokens"),
        (dict(method="fastv", keep_tokens=0), "positive integer"),
        (dict(method="vla_prunr", keep_ratio=0.5), r"Did you mean 'vla_pruner'\?.*Valid:"),
        (dict(method="fastv", keep_ratio=0.5, layer=-1), "non-negative"),
        (dict(method="vla_pruner", keep_ratio=0.5, params={"gama": 0.8}), r"unknown parameter\(s\) \['gama'\]"),
        (dict(method="vla_pruner", keep_ratio=0.5, params={"gamma": 2.0}), "gamma"),
    ],
)
def test_bad_pruning_config_fails_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenPruningConfig(**kwargs)


def test_bad_layer_skip_and_head_cache():
    with pytest.raises(ValueError, match=">= 0"):
        LayerSkipConfig(layers=(3, -1))
    with pytest.raises(ValueError, match="duplicate"):
        LayerSkipConfig(layers=(3, 5, 3))
    with pytest.raises(ValueError, match="num_drop needs a ranking_file"):
        LayerSkipConfig(num_drop=2)
    with pytest.raises(ValueError, match="interval"):
        HeadCacheConfig(interval=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['keep_rato'\]"):
        AccelConfig.from_dict({"method": "fastv", "keep_rato": 0.5})
    with pytest.raises(ValueError, match="cannot be combined"):
        AccelConfig.from_dict({"method": "fastv", "keep_ratio": 0.5, "reuse": {}})
    with pytest.raises(ValueError, match=r"unknown reuse key\(s\) \['threshold'\]"):
        AccelConfig.from_dict({"reuse": {"threshold": 0.9}})


def test_binding_to_a_model_checks_layer_indices():
    fastv = TokenPruningConfig("fastv", keep_ratio=0.5, layer=32)
    with pytest.raises(ValueError, match="beyond the model's 32 layers"):
        resolve_plan(AccelConfig(pruning=fastv), 32)
    with pytest.raises(ValueError, match=r"layers \[40\] do not exist"):
        resolve_plan(AccelConfig(layer_skip=LayerSkipConfig(layers=(40,))), 32)
    with pytest.raises(ValueError, match="K-1=1, which is skipped"):  # fastv's K = 2
        resolve_plan(AccelConfig(TokenPruningConfig("fastv", keep_ratio=0.5), LayerSkipConfig(layers=(1,))), 32)
    with pytest.raises(ValueError, match="K must be >= 1"):
        resolve_plan(AccelConfig(TokenPruningConfig("fastv", keep_ratio=0.5, layer=0)), 32)
    with pytest.raises(ValueError, match="action_layer=15 is skipped"):
        resolve_plan(AccelConfig(TokenPruningConfig("vla_pruner", keep_ratio=0.5), LayerSkipConfig(layers=(15,))), 32)


def test_plan_defaults():
    plan = resolve_plan(AccelConfig(TokenPruningConfig("vla_pruner", keep_ratio=0.5)), 32)
    assert (plan.prune_layer, plan.score_layer, plan.action_layer) == (2, 1, 15)  # the paper's K=3: 2 full layers
    plan = resolve_plan(AccelConfig(TokenPruningConfig("divprune", keep_ratio=0.5), LayerSkipConfig((30, 31))), 32)
    assert (plan.prune_layer, plan.score_layer, plan.action_layer) == (0, None, None)
    assert plan.executed == tuple(range(30))
    flat = {"method": "fastv", "keep_ratio": 0.25, "skip_layers": [5, 9], "head_cache_interval": 5}
    cfg = AccelConfig.from_dict(flat)
    assert cfg.layer_skip.layers == (5, 9) and cfg.head_cache.interval == 5 and cfg.pruning.keep_ratio == 0.25


def test_presets_compose_with_the_eval_app_and_sweep_overrides():
    cfg = compose_config("eval", ["accel=vla_pruner", "accel.keep_ratio=0.25", "accel.params.window=2"])
    accel = AccelConfig.from_dict(OmegaConf.to_container(cfg.accel, resolve=True))
    assert accel.pruning.method == "vla_pruner" and accel.pruning.budget(256) == 64
    assert accel.pruning.params["window"] == 2


def test_load_accel_config_presets():
    from vla_accel.accel.config import load_accel_config

    cfg = load_accel_config("efficientvla_tokens", keep_tokens=56)
    assert cfg.pruning.budget(256) == 56 and cfg.pruning.keep_ratio is None
    with pytest.raises(ValueError, match="Did you mean 'divprune'"):
        load_accel_config("divprun")
