"""`make_policy` entries for the learned policies: load from `policy.path`, clear errors."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from fixtures.tiny_models import policy_yaml, tiny_model_dict
from fixtures.vla_helpers import random_obs

from vla_accel.policies import make_policy
from vla_accel.policies.cogact.configuration_cogact import CogACTConfig
from vla_accel.policies.cogact.modeling_cogact import CogACTPolicy
from vla_accel.policies.common.action_tokenizer import compute_norm_stats


def test_policy_yaml_without_a_path_says_what_is_needed():
    with pytest.raises(ValueError, match="needs policy.path"):
        make_policy(policy_yaml("openvla_tiny"), env=None)


def test_cogact_from_path_with_runtime_overrides(tmp_path):
    stats = {"spatial": compute_norm_stats(np.random.default_rng(0).uniform(-1, 1, (50, 7)))}
    CogACTPolicy.from_config(CogACTConfig.from_dict(tiny_model_dict("cogact_tiny", norm_stats=stats))).save_pretrained(tmp_path)
    cfg = OmegaConf.merge(policy_yaml("cogact_tiny"), {"path": str(tmp_path), "n_action_steps": 4,
                                                      "use_ensemble": True, "dtype": "float32"})
    policy = make_policy(cfg, env=None)
    # a training output_dir resolves to its newest checkpoint
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_0000010").symlink_to(tmp_path, target_is_directory=True)
    assert isinstance(make_policy(OmegaConf.merge(cfg, {"path": str(tmp_path / "run")}), env=None), CogACTPolicy)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_policy(OmegaConf.merge(cfg, {"path": str(tmp_path / "nothing")}), env=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        make_policy(OmegaConf.merge(cfg, {"path": str(tmp_path / "empty")}), env=None)
    assert isinstance(policy, CogACTPolicy) and policy.dtype == torch.float32
    assert policy.config.n_action_steps == 4 and policy.config.use_ensemble
    policy.reset()
    assert policy.select_action(random_obs()).shape == (7,)
    with pytest.raises(ValueError, match="n_action_steps must be in"):
        make_policy(OmegaConf.merge(cfg, {"n_action_steps": 99}), env=None)
    with pytest.raises(ValueError, match="unknown dtype"):
        make_policy(OmegaConf.merge(cfg, {"dtype": "fp8"}), env=None)


def test_a_relative_path_missing_here_is_looked_up_at_the_repository_root(tmp_path, monkeypatch):
    from vla_accel.policies.common import factory

    ckpt = tmp_path / "repo" / "checkpoints" / "tiny"
    CogACTPolicy.from_config(CogACTConfig.from_dict(tiny_model_dict("cogact_tiny"))).save_pretrained(ckpt)
    monkeypatch.setattr(factory, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)  # "checkpoints/tiny" does not exist from here
    cfg = OmegaConf.merge(policy_yaml("cogact_tiny"), {"path": "checkpoints/tiny"})
    assert isinstance(make_policy(cfg, env=None), CogACTPolicy)
