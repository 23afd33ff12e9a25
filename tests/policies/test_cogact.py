"""The CogACT-style policy: cognition feature through the runner, DDIM sampling, CFG, ensembling."""

import numpy as np
import pytest
import torch
from fixtures.tiny_models import tiny_model_dict
from fixtures.vla_helpers import random_obs

from vla_accel.policies.cogact.configuration_cogact import CogACTConfig
from vla_accel.policies.cogact.ddim import DDIM
from vla_accel.policies.cogact.dit import DiTBlock
from vla_accel.policies.cogact.ensemble import AdaptiveEnsembler, ensemble_weights
from vla_accel.policies.cogact.modeling_cogact import CogACTPolicy
from vla_accel.policies.common.action_tokenizer import compute_norm_stats
from vla_accel.policies.llm_runner import HFRunner


def make_policy(**overrides) -> CogACTPolicy:
    torch.manual_seed(0)
    stats = {"spatial": compute_norm_stats(np.random.default_rng(0).uniform(-0.5, 0.5, (100, 7)))}
    p = CogACTPolicy.from_config(CogACTConfig.from_dict(tiny_model_dict("cogact_tiny", norm_stats=stats,
                                                                      **overrides))).eval()
    with torch.no_grad():  # the head starts at zero output (DiT init); give it a random one to test
        torch.nn.init.normal_(p.action_model.final_proj.weight, std=0.2)
    return p


@pytest.fixture(scope="module")
def policy():
    return make_policy()


def test_dit_blocks_expose_attn_and_mlp_submodules(policy):
    blocks = policy.action_model.blocks
    assert len(blocks) == 2 and all(isinstance(b, DiTBlock) for b in blocks)
    assert all(hasattr(b, "attn") and hasattr(b, "mlp") for b in blocks)


def test_chunk_shape_and_seeded_determinism(policy):
    obs = random_obs()
    policy.reset()
    first = policy.predict_action_chunk(obs)
    second = policy.predict_action_chunk(obs)  # next noise draw from the generator
    policy.reset()  # re-seeds the noise
    again = policy.predict_action_chunk(obs)
    assert first.shape == (1, 16, 7) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, second)


def test_cognition_feature_is_the_runners_hidden_state_at_the_cognition_token(policy):
    calls = []

    class Spy(HFRunner):
        def prefill(self, llm, inputs_embeds, attention_mask, *rest):
            res = super().prefill(llm, inputs_embeds, attention_mask, *rest)
            calls.append((inputs_embeds, res.hidden))
            return res

        def end_step(self):
            calls.append("end_step")

    policy.runner = Spy()
    try:
        policy.predict_action_chunk(random_obs())
    finally:
        policy.runner = HFRunner()
    (embeds, hidden), end = calls
    assert end == "end_step"
    cog = policy.language_model.get_input_embeddings().weight[policy.cognition_id]
    torch.testing.assert_close(embeds[0, -1], cog)  # the cognition token is the last prompt token
    inputs = policy.process(policy.parse(random_obs()))
    torch.testing.assert_close(policy.training_cognition(inputs), hidden, atol=1e-5, rtol=1e-5)


def test_batch_rows_equal_single_predictions_given_the_same_noise(policy):
    obs = random_obs(batch=2, seed=4)
    noise = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(3))
    batch = policy.predict_action_chunk(obs, noise=noise)
    for i in range(2):
        single = {"agentview_image": obs["agentview_image"][i], "instruction": obs["instruction"][i]}
        np.testing.assert_allclose(policy.predict_action_chunk(single, noise=noise[i : i + 1]), batch[i : i + 1],
                                   atol=1e-5)


def test_guidance_uses_the_learned_null_condition(policy):
    cognition = torch.randn(1, policy.language_model.config.hidden_size)
    noise = torch.randn(1, 16, 7)
    guided = policy.sample_actions(cognition, noise)
    policy.config.cfg_scale = 1.0
    try:
        plain = policy.sample_actions(cognition, noise)
        with torch.no_grad():
            policy.action_model.null_condition.add_(1.0)
        plain_after = policy.sample_actions(cognition, noise)
    finally:
        policy.config.cfg_scale = 1.5
    assert not torch.allclose(guided, plain)
    torch.testing.assert_close(plain, plain_after)  # without guidance the null condition is unused


def test_ddim_timesteps_and_exact_recovery_from_perfect_noise_prediction():
    ddim = DDIM(100)
    assert ddim.timesteps(10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    x0 = torch.rand(3, 16, 7) * 1.6 - 0.8
    noise = torch.randn(3, 16, 7)
    steps = ddim.timesteps(10)
    x = ddim.add_noise(x0, noise, torch.full((3,), steps[0]))
    for i, t in enumerate(steps):  # an oracle that knows the noise recovers x0 exactly
        x = ddim.step(noise, t, steps[i + 1] if i + 1 < len(steps) else -1, x)
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=1e-5)


def test_select_action_executes_n_action_steps_per_chunk():
    p = make_policy(n_action_steps=3)
    obs = random_obs()
    p.reset()
    chunk = p.predict_action_chunk(obs)[0]
    calls = []
    real = p.predict_action_chunk
    p.predict_action_chunk = lambda o: (calls.append(1), real(o))[1]
    p.reset()  # same seed: the first chunk is `chunk` again
    actions = [p.select_action(obs) for _ in range(4)]
    assert len(calls) == 2  # a new chunk after 3 steps
    np.testing.assert_allclose(np.stack(actions[:3]), chunk[:3], atol=1e-6)


def test_ensemble_weights_follow_cogact():
    current = np.array([1.0, 0.0])
    cands = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    w = ensemble_weights(current, cands, alpha=0.1)
    expect = np.exp(0.1 * np.array([0.0, 1.0, -1.0]))
    np.testing.assert_allclose(w, expect / expect.sum(), rtol=1e-6)


def test_ensembler_blends_the_predictions_made_for_this_step():
    ens = AdaptiveEnsembler(horizon=3, alpha=0.1)
    c0 = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    c1 = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    np.testing.assert_allclose(ens.update(c0), c0[0])
    out = ens.update(c1)  # now: c0's 2nd action and c1's 1st
    w = ensemble_weights(c1[0], np.stack([c0[1], c1[0]]), 0.1)
    np.testing.assert_allclose(out, w[0] * c0[1] + w[1] * c1[0], rtol=1e-6)
    ens.reset()
    np.testing.assert_allclose(ens.update(c1), c1[0])


def test_ensembling_policy_predicts_every_step():
    p = make_policy(use_ensemble=True)
    p.reset()
    obs = random_obs()
    a0 = p.select_action(obs)
    a1 = p.select_action(obs)
    assert len(p.ensembler.history) == 2 and a0.shape == a1.shape == (7,)


def test_save_load_round_trip(policy, tmp_path):
    policy.save_pretrained(tmp_path)
    loaded = CogACTPolicy.from_pretrained(tmp_path)
    obs = random_obs(batch=2)
    noise = torch.randn(2, 16, 7)
    np.testing.assert_array_equal(loaded.predict_action_chunk(obs, noise=noise),
                                  policy.predict_action_chunk(obs, noise=noise))
    half = CogACTPolicy.from_pretrained(tmp_path, dtype=torch.bfloat16)
    out = half.predict_action_chunk(obs, noise=noise)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_config_validation():
    with pytest.raises(ValueError, match="n_action_steps must be in"):
        CogACTConfig(chunk_size=4, n_action_steps=8)
    with pytest.raises(ValueError, match="unknown noise_schedule"):
        CogACTConfig(noise_schedule="cosine2")


def test_standardized_condition_statistics_survive_save_and_load(tmp_path):
    p = make_policy()
    with torch.no_grad():
        p.action_model.cond_norm.running_mean.normal_()
        p.action_model.cond_norm.running_var.uniform_(0.5, 2.0)
    p.save_pretrained(tmp_path)
    loaded = CogACTPolicy.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.action_model.cond_norm.running_mean, p.action_model.cond_norm.running_mean)
    obs, noise = random_obs(batch=2), torch.randn(2, 16, 7)
    np.testing.assert_array_equal(loaded.predict_action_chunk(obs, noise=noise),
                                  p.predict_action_chunk(obs, noise=noise))

