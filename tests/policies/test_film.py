"""Instruction-conditioned FiLM in the vision tower (policies/common/film.py, `text_film`)."""

import numpy as np
import pytest
import torch
from fixtures.tiny_models import tiny_model_dict
from fixtures.vla_helpers import random_obs

from vla_accel.policies.cogact.configuration_cogact import CogACTConfig
from vla_accel.policies.cogact.modeling_cogact import CogACTPolicy
from vla_accel.policies.common.action_tokenizer import compute_norm_stats
from vla_accel.policies.common.film import instruction_embedding
from vla_accel.policies.openvla.configuration_openvla import OpenVLAConfig
from vla_accel.policies.openvla.modeling_openvla import OpenVLAPolicy


def _cogact(text_film: bool, seed: int = 0) -> CogACTPolicy:
    torch.manual_seed(seed)
    stats = {"spatial": compute_norm_stats(np.random.default_rng(0).uniform(-0.5, 0.5, (100, 7)))}
    cfg = CogACTConfig.from_dict(tiny_model_dict("cogact_tiny", norm_stats=stats, text_film=text_film))
    policy = CogACTPolicy.from_config(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(policy.action_model.final_proj.weight, std=0.2)
    return policy


def _randomise_film(policy) -> None:
    with torch.no_grad():
        for p in policy.vision_film.parameters():
            p.normal_(std=0.5)


def test_instruction_embedding_is_the_mean_over_instruction_tokens_only():
    embeds = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[False, True, True, False]])
    torch.testing.assert_close(instruction_embedding(embeds, mask), torch.tensor([[4.5, 5.5, 6.5]]))
    with pytest.raises(ValueError, match="at least one instruction token"):
        instruction_embedding(embeds, torch.zeros(1, 4, dtype=torch.bool))


def test_a_new_film_model_acts_exactly_as_the_same_model_without_film():
    """Zero-initialised FiLM is the identity: same weights elsewhere -> the same actions."""
    plain, film = _cogact(False), _cogact(True)
    film.load_state_dict(plain.state_dict(), strict=False)
    obs, noise = random_obs(batch=2, seed=1), torch.randn(2, 16, 7)
    np.testing.assert_array_equal(film.predict_action_chunk(obs, noise=noise),
                                  plain.predict_action_chunk(obs, noise=noise))


def test_visual_tokens_depend_on_the_instruction_only_with_film():
    obs = random_obs(batch=1, seed=2)
    other = {**obs, "instruction": ["put the bowl on the plate"]}
    for text_film in (False, True):
        policy = _cogact(text_film)
        if text_film:
            _randomise_film(policy)
        with torch.no_grad():
            tokens = []
            for o in (obs, other):
                inputs = policy.process(policy.parse(o))
                batch = policy.prompt_batch(inputs)
                tokens.append(policy.encode_images(inputs.pixel_values, policy.film_condition(batch)))
        assert torch.equal(tokens[0], tokens[1]) != text_film


def test_film_model_batch_rows_equal_single_rows_and_survive_save_load(tmp_path):
    policy = _cogact(True)
    _randomise_film(policy)
    obs, noise = random_obs(batch=2, seed=4), torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(3))
    batch = policy.predict_action_chunk(obs, noise=noise)
    for i in range(2):
        single = {"agentview_image": obs["agentview_image"][i], "instruction": obs["instruction"][i]}
        np.testing.assert_allclose(policy.predict_action_chunk(single, noise=noise[i : i + 1]), batch[i : i + 1],
                                   atol=1e-5)
    policy.save_pretrained(tmp_path)
    loaded = CogACTPolicy.from_pretrained(tmp_path)
    assert loaded.vision_film is not None
    np.testing.assert_array_equal(loaded.predict_action_chunk(obs, noise=noise), batch)


def test_film_needs_its_condition():
    policy = _cogact(True)
    inputs = policy.process(policy.parse(random_obs(batch=1)))
    with pytest.raises(ValueError, match="text_film"):
        policy.encode_images(inputs.pixel_values)


def test_openvla_style_model_trains_its_film_layers():
    torch.manual_seed(0)
    stats = {"spatial": compute_norm_stats(np.random.default_rng(0).uniform(-0.5, 0.5, (100, 7)))}
    policy = OpenVLAPolicy.from_config(OpenVLAConfig.from_dict(
        tiny_model_dict("openvla_tiny", norm_stats=stats, text_film=True)))
    inputs = policy.process(policy.parse(random_obs(batch=2, seed=5)))
    loss, _ = policy.action_token_loss(inputs, torch.randint(policy.config.action_vocab_end - 256,
                                                             policy.config.action_vocab_end, (2, 7)))
    loss.backward()
    grads = [p.grad for p in policy.vision_film.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
