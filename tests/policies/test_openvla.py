"""The OpenVLA-style policy: prompt layout, decoding, batching, checkpoints, input errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from fixtures.tiny_models import tiny_model_dict
from fixtures.vla_helpers import INSTRUCTIONS, random_obs

from vla_accel.policies.common.action_tokenizer import compute_norm_stats
from vla_accel.policies.llm_runner import HFRunner
from vla_accel.policies.openvla.configuration_openvla import OpenVLAConfig
from vla_accel.policies.openvla.modeling_openvla import OpenVLAPolicy


class RecordingRunner(HFRunner):
    def __init__(self):
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def end_step(self):
        self.calls.append("end_step")

    def prefill(self, *args, **kw):
        self.calls.append("prefill")
        return super().prefill(*args, **kw)

    def decode_one_token(self, *args, **kw):
        self.calls.append("decode")
        return super().decode_one_token(*args, **kw)


def norm_stats():
    rng = np.random.default_rng(1)
    return {"spatial": compute_norm_stats(rng.uniform(-0.5, 0.5, (200, 7))),
            "goal": compute_norm_stats(rng.uniform(-0.2, 0.9, (200, 7)))}


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    config = OpenVLAConfig.from_dict(tiny_model_dict("openvla_tiny", norm_stats=norm_stats()))
    p = OpenVLAPolicy.from_config(config).eval()
    p.unnorm_key = "spatial"
    return p


def test_prompt_layout_bos_visual_text_left_padded(policy):
    parsed = policy.parse(random_obs(batch=2))
    inputs = policy.process(parsed)
    batch = policy.prompt_batch(inputs)
    m = policy.config.num_visual_tokens
    assert m == 16
    tok = policy.tokenizer
    prompt0 = tok.decode(inputs.text_ids[0])
    assert prompt0 == "In: What action should the robot take to pick up the red block?\nOut:"
    for i in range(2):
        vs = int(batch.visual_start[i])
        assert batch.input_ids[i, vs - 1] == tok.bos_token_id
        assert batch.attention_mask[i, : vs - 1].sum() == 0 and batch.attention_mask[i, vs - 1 :].all()
        instr = tok.decode(batch.input_ids[i][batch.text_mask[i]])
        assert instr.strip() == parsed.instructions[i].lower()
    assert batch.visual_start[1] == 1  # the longer prompt has no padding


def test_select_action_runs_prefill_then_six_decodes_and_commits_the_step(policy):
    runner = RecordingRunner()
    policy.runner = runner
    try:
        policy.reset()
        action = policy.select_action(random_obs())
    finally:
        policy.runner = HFRunner()
    assert action.shape == (7,) and action.dtype == np.float32
    assert runner.calls == ["reset", "prefill"] + ["decode"] * 6 + ["end_step"]


def test_actions_are_bin_centres_unnormalised_with_the_chosen_key(policy):
    obs = random_obs()
    parsed = policy.parse(obs)
    tokens = policy.generate_action_tokens(policy.process(parsed)).numpy()[0]
    assert np.all((tokens >= policy.action_tokenizer.first_id) & (tokens < policy.action_tokenizer.vocab_end))
    normalized = policy.action_tokenizer.decode(tokens)
    for key in ("spatial", "goal"):
        st = policy.config.norm_stats[key]["action"]
        lo, hi = np.array(st["q01"]), np.array(st["q99"])
        expect = np.where(st["mask"], 0.5 * (normalized + 1) * (hi - lo) + lo, normalized)
        got = policy.predict_action(obs["agentview_image"], obs["instruction"], unnorm_key=key)
        np.testing.assert_allclose(got, expect, atol=1e-6)


def test_batch_rows_equal_single_predictions(policy):
    obs = random_obs(batch=2, seed=5)
    inputs = policy.process(policy.parse(obs))
    batch_tokens = policy.generate_action_tokens(inputs)
    batch_actions = policy.predict_action_chunk(obs)
    assert batch_actions.shape == (2, 1, 7)
    for i in range(2):
        single = {"agentview_image": obs["agentview_image"][i], "instruction": obs["instruction"][i]}
        single_tokens = policy.generate_action_tokens(policy.process(policy.parse(single)))
        assert torch.equal(single_tokens[0], batch_tokens[i])
        np.testing.assert_allclose(policy.predict_action_chunk(single)[0], batch_actions[i], atol=1e-6)


def test_pil_and_numpy_images_give_the_same_action(policy):
    obs = random_obs(seed=3)
    a = policy.predict_action(obs["agentview_image"], "Pick up the red block")
    b = policy.predict_action(Image.fromarray(obs["agentview_image"]), "pick up the red block")
    np.testing.assert_array_equal(a, b)


def test_save_load_round_trip_gives_equal_outputs(policy, tmp_path):
    policy.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    loaded = OpenVLAPolicy.from_pretrained(tmp_path)
    loaded.unnorm_key = "spatial"
    obs = random_obs(batch=2, seed=7)
    np.testing.assert_array_equal(loaded.predict_action_chunk(obs), policy.predict_action_chunk(obs))
    assert loaded.config.norm_stats == policy.config.norm_stats
    half = OpenVLAPolicy.from_pretrained(tmp_path, dtype=torch.bfloat16)  # CUDA's dtype, on CPU here
    half.unnorm_key = "spatial"
    assert half.dtype == torch.bfloat16 and np.isfinite(half.predict_action_chunk(obs)).all()


def test_wrist_camera_adds_visual_tokens():
    config = OpenVLAConfig.from_dict(tiny_model_dict("openvla_tiny", cameras=["agentview", "wrist"],
                                                     norm_stats=norm_stats()))
    p = OpenVLAPolicy.from_config(config).eval()
    p.unnorm_key = "goal"
    assert config.num_visual_tokens == 32
    obs = random_obs(batch=2)
    assert p.prompt_batch(p.process(p.parse(obs))).num_visual == 32
    assert p.predict_action_chunk(obs).shape == (2, 1, 7)
    with pytest.raises(ValueError, match="wrist_image"):
        p.predict_action_chunk({k: v for k, v in obs.items() if k != "wrist_image"})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: o.update(agentview_image=o["agentview_image"].astype(np.float32)), "expected dtype uint8"),
        (lambda o: o.update(agentview_image=np.zeros((48, 48, 3), np.uint8)), "expected image size 32x32.*got 48x48"),
        (lambda o: o.update(agentview_image=np.zeros((32, 32, 4), np.uint8)), r"expected shape \(H, W, 3\)"),
        (lambda o: o.update(instruction="   "), "instruction 0 is empty"),
        (lambda o: o.pop("instruction"), "lacks 'instruction'"),
        (lambda o: o.update(instruction=None), "instruction 0 must be a string"),
    ],
)
def test_bad_inputs_raise_clear_errors(policy, change, message):
    obs = random_obs()
    change(obs)
    with pytest.raises(ValueError, match=message):
        policy.predict_action_chunk(obs)


def test_unknown_unnorm_key_lists_valid_keys(policy):
    obs = random_obs()
    with pytest.raises(ValueError, match=r"unknown unnorm_key 'libero'.*\['goal', 'spatial'\]"):
        policy.predict_action(obs["agentview_image"], INSTRUCTIONS[0], unnorm_key="libero")


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown camera 'top'"):
        OpenVLAConfig(cameras=["agentview", "top"])
    with pytest.raises(ValueError, match="multiple of patch_size"):
        OpenVLAConfig.from_dict({"vision": [{"image_size": 30, "patch_size": 8}]})
    with pytest.raises(ValueError, match="unknown OpenVLAConfig fields"):
        OpenVLAConfig.from_dict({"visoin": []})


def test_a_bf16_cast_keeps_float32_rotary_frequencies():
    from vla_accel.policies.openvla.configuration_openvla import OpenVLAConfig

    policy = OpenVLAPolicy.from_config(OpenVLAConfig.from_dict(tiny_model_dict("openvla_tiny")))
    ref = policy.language_model.model.rotary_emb.inv_freq.clone()
    policy.to(dtype=torch.bfloat16)
    assert policy.dtype == torch.bfloat16
    rope = policy.language_model.model.rotary_emb
    assert rope.inv_freq.dtype == torch.float32 and torch.equal(rope.inv_freq, ref)
