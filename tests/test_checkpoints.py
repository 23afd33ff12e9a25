"""The shipped checkpoints (checkpoints/) and the presets that name them (conf/policy/<type>_<suite>.yaml)."""

import json

import numpy as np
import pytest
from fixtures.fakes import compose_config

from vla_accel.envs import make_env
from vla_accel.policies import make_policy
from vla_accel.policies.common.factory import REPO_ROOT

SHIPPED = {  # preset -> (type, suite)
    "cogact_goal": ("cogact", "goal"),
    "cogact_goal_small": ("cogact", "goal"),  # the first goal policy, kept for the README sections measured on it
    "cogact_object": ("cogact", "object"),
    "cogact_spatial": ("cogact", "spatial"),
    "cogact_long": ("cogact", "long"),
    "openvla_goal": ("openvla", "goal"),
}


def _policy_cfg(preset: str):
    return compose_config("eval", [f"policy={preset}", f"env={SHIPPED[preset][1]}"]).policy


@pytest.mark.parametrize("preset", SHIPPED)
def test_preset_names_a_shipped_checkpoint_of_its_architecture(preset):
    kind, suite = SHIPPED[preset]
    cfg = _policy_cfg(preset)
    ckpt = REPO_ROOT / cfg.path
    assert cfg.type == kind and (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()
    assert not list(ckpt.glob("trainer_state*")), "ship the model files only"
    assert sum(f.stat().st_size for f in ckpt.iterdir()) < 40e6
    config = json.loads((ckpt / "config.json").read_text())
    assert config["llm"]["hidden_size"] == cfg.model.llm.hidden_size
    assert config["llm"]["num_layers"] == cfg.model.llm.num_layers
    assert config["vision"][0]["image_size"] == cfg.model.vision[0].image_size
    assert list(config["norm_stats"]) == [suite]
    card = (ckpt / "README.md").read_text()
    assert "vla-accel train" in card and "vla-accel eval" in card and "/200" in card  # command + success


@pytest.mark.parametrize("preset", SHIPPED)
def test_shipped_policy_acts_on_an_observation_of_its_suite_from_any_working_directory(preset, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)  # the relative checkpoint path resolves from the repository root
    policy = make_policy(_policy_cfg(preset), env=None)
    env = make_env(SHIPPED[preset][1], 9, image_size=128)
    try:
        obs, _ = env.reset(options={"init_state_id": 0})
        policy.reset()
        action = policy.select_action(obs)
    finally:
        env.close()
    assert action.shape == (7,) and np.all(np.isfinite(action)) and np.all(np.abs(action) <= 1.0)


@pytest.mark.slow
def test_shipped_cogact_policy_succeeds_in_closed_loop(tmp_path):
    """Closed loop on goal task 0 (20/20 in the model card's table): at least 3 of 4 episodes succeed."""
    from vla_accel.cli import main

    assert main(["eval", "policy=cogact_goal", "env=goal", "env.task_ids=[0]", "eval.n_episodes=4",
                 "eval.progress=false", "eval.timing_table=false", f"hydra.run.dir={tmp_path}"]) == 0
    info = json.loads((tmp_path / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 4 and info["overall"]["n_success"] >= 3
