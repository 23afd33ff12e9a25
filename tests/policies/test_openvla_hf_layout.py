"""A TINY checkpoint written in the published OpenVLA Hugging Face layout (same config fields, same
safetensors key names, sharded with an index file, bf16) loads into our OpenVLA-style model, matches
a reference timm-ViT computation written here from the raw tensors, and predicts an action."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from fixtures.vla_helpers import INSTRUCTIONS

from vla_accel.policies.common.action_tokenizer import compute_norm_stats
from vla_accel.policies.common.tokenizer import build_tokenizer
from vla_accel.policies.openvla.modeling_openvla import OpenVLAPolicy

DINO_ID, SIGLIP_ID = "vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"
IMAGE, PATCH, DEPTH = 56, 14, 3


def timm_vit(prefix, width, mlp, *, cls, reg, layer_scale, map_head, gen, ls_name="scale_factor"):
    """Random tensors under timm's VisionTransformer names (as OpenVLA's checkpoint stores them)."""
    r = lambda *s: torch.randn(*s, generator=gen) * 0.05  # noqa: E731
    w = {f"{prefix}patch_embed.proj.weight": r(width, 3, PATCH, PATCH), f"{prefix}patch_embed.proj.bias": r(width),
         f"{prefix}pos_embed": r(1, (IMAGE // PATCH) ** 2, width),
         f"{prefix}norm.weight": 1 + r(width), f"{prefix}norm.bias": r(width)}
    if cls:
        w[f"{prefix}cls_token"] = r(1, 1, width)
    if reg:
        w[f"{prefix}reg_token"] = r(1, reg, width)
    for i in range(DEPTH):
        b = f"{prefix}blocks.{i}."
        w.update({b + "norm1.weight": 1 + r(width), b + "norm1.bias": r(width),
                  b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
                  b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
                  b + "norm2.weight": 1 + r(width), b + "norm2.bias": r(width),
                  b + "mlp.fc1.weight": r(mlp, width), b + "mlp.fc1.bias": r(mlp),
                  b + "mlp.fc2.weight": r(width, mlp), b + "mlp.fc2.bias": r(width)})
        if layer_scale:
            w[b + f"ls1.{ls_name}"] = 1 + r(width)
            w[b + f"ls2.{ls_name}"] = 1 + r(width)
    if map_head:  # SigLIP's attention-pooling head: in the checkpoint, never used by OpenVLA
        w.update({f"{prefix}attn_pool.latent": r(1, 1, width), f"{prefix}attn_pool.q.weight": r(width, width),
                  f"{prefix}attn_pool.q.bias": r(width), f"{prefix}attn_pool.kv.weight": r(2 * width, width),
                  f"{prefix}attn_pool.kv.bias": r(2 * width), f"{prefix}attn_pool.proj.weight": r(width, width),
                  f"{prefix}attn_pool.proj.bias": r(width), f"{prefix}attn_pool.norm.weight": 1 + r(width),
                  f"{prefix}attn_pool.norm.bias": r(width), f"{prefix}attn_pool.mlp.fc1.weight": r(mlp, width),
                  f"{prefix}attn_pool.mlp.fc1.bias": r(mlp), f"{prefix}attn_pool.mlp.fc2.weight": r(width, mlp),
                  f"{prefix}attn_pool.mlp.fc2.bias": r(width)})
    return w


def write_openvla_checkpoint(path, fused=True, sharded=True, ls_name="scale_factor"):
    gen = torch.Generator().manual_seed(0)
    tok = build_tokenizer(bpe_vocab_size=400)
    tok.save_pretrained(str(path))
    n_tok = len(tok)
    w = timm_vit("vision_backbone.featurizer.", 32, 64, cls=True, reg=4, layer_scale=True, map_head=False,
                 gen=gen, ls_name=ls_name)
    vdim = 32
    if fused:
        w.update(timm_vit("vision_backbone.fused_featurizer.", 48, 96, cls=False, reg=0, layer_scale=False,
                          map_head=True, gen=gen))
        vdim += 48
    text = LlamaConfig(vocab_size=n_tok + 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(text)
    proj = ({"fc1": (4 * vdim, vdim), "fc2": (64, 4 * vdim), "fc3": (64, 64)} if fused
            else {"fc1": (64, vdim), "fc2": (64, 64)})
    for name, shape in proj.items():
        w[f"projector.{name}.weight"] = torch.randn(*shape, generator=gen) / math.sqrt(shape[1])
        w[f"projector.{name}.bias"] = torch.zeros(shape[0])
    lm = {f"language_model.{k}": v.detach().clone() for k, v in llm.state_dict().items()}
    w = {k: v.to(torch.bfloat16).contiguous() for k, v in w.items()}
    lm = {k: v.to(torch.bfloat16).contiguous() for k, v in lm.items()}
    rng = np.random.default_rng(0)
    acts = rng.uniform(-0.4, 0.6, (300, 7))
    config = {
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
        "model_type": "openvla", "vision_backbone_id": "dinosiglip-vit-so-224px" if fused else "dinov2-vit-l",
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp" if fused else "no-align+gelu-mlp",
        "use_fused_vision_backbone": fused, "image_resize_strategy": "resize-naive",
        "text_config": text.to_dict(), "llm_max_length": 2048, "pad_token_id": tok.pad_token_id,
        "pad_to_multiple_of": 64, "output_projector_states": False,
        "timm_model_ids": [DINO_ID, SIGLIP_ID] if fused else [DINO_ID],
        "timm_override_act_layers": [None, None] if fused else [None],
        "image_sizes": [IMAGE, IMAGE] if fused else [IMAGE], "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "norm_stats": {"bridge_orig": compute_norm_stats(acts, n_trajectories=3),
                       "libero_spatial_no_noops": compute_norm_stats(acts * 0.5, n_trajectories=3)},
        "n_action_bins": 256, "torch_dtype": "bfloat16", "transformers_version": "4.40.1",
    }
    (path / "config.json").write_text(json.dumps(config))
    if sharded:
        shards = {"model-00001-of-00002.safetensors": w, "model-00002-of-00002.safetensors": lm}
        for name, tensors in shards.items():
            save_file(tensors, str(path / name), metadata={"format": "pt"})
        index = {"metadata": {"total_size": sum(v.numel() * 2 for v in {**w, **lm}.values())},
                 "weight_map": {k: n for n, t in shards.items() for k in t}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file({**w, **lm}, str(path / "model.safetensors"), metadata={"format": "pt"})
    return {**w, **lm}, config


def reference_timm_features(w, prefix, x, heads, n_prefix):
    """timm's VisionTransformer.get_intermediate_layers(n={depth - 2}) from the raw tensors."""
    g = lambda k: w[prefix + k].float()  # noqa: E731
    h = F.conv2d(x, g("patch_embed.proj.weight"), g("patch_embed.proj.bias"), stride=PATCH)
    h = h.flatten(2).transpose(1, 2) + g("pos_embed")
    pre = [g(k).expand(x.shape[0], -1, -1) for k in ("cls_token", "reg_token") if prefix + k in w]
    h = torch.cat(pre + [h], dim=1)
    d = h.shape[-1]
    for i in range(DEPTH - 1):  # through the second-to-last block
        b = f"blocks.{i}."
        ls = lambda n: g(b + n + ".scale_factor") if prefix + b + n + ".scale_factor" in w else 1.0  # noqa: E731
        y = F.layer_norm(h, (d,), g(b + "norm1.weight"), g(b + "norm1.bias"), eps=1e-6)
        q, k, v = (y @ g(b + "attn.qkv.weight").T + g(b + "attn.qkv.bias")).split(d, dim=-1)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ split(v)
        att = att.transpose(1, 2).reshape(h.shape)
        h = h + ls("ls1") * (att @ g(b + "attn.proj.weight").T + g(b + "attn.proj.bias"))
        y = F.layer_norm(h, (d,), g(b + "norm2.weight"), g(b + "norm2.bias"), eps=1e-6)
        y = F.gelu(y @ g(b + "mlp.fc1.weight").T + g(b + "mlp.fc1.bias"))
        h = h + ls("ls2") * (y @ g(b + "mlp.fc2.weight").T + g(b + "mlp.fc2.bias"))
    return h[:, n_prefix:]


def test_tiny_sharded_openvla_checkpoint_loads_matches_timm_and_predicts(tmp_path):
    weights, config = write_openvla_checkpoint(tmp_path)
    policy = OpenVLAPolicy.from_pretrained(tmp_path, dtype=torch.float32)
    assert policy.dtype == torch.float32
    # every stored tensor OpenVLA uses is in our model, unchanged
    ours = policy.state_dict()
    for key, tensor in weights.items():
        if ".attn_pool." not in key:
            torch.testing.assert_close(ours[key], tensor.float(), rtol=0, atol=0)
    assert policy.config.norm_stats == config["norm_stats"]
    assert policy.action_tokenizer.vocab_end == config["text_config"]["vocab_size"] - 64
    assert policy.config.num_visual_tokens == 16 and policy.projector.num_layers == 3

    x = torch.rand(2, 3, IMAGE, IMAGE)
    for prefix, module, n_prefix in (("vision_backbone.featurizer.", policy.vision_backbone.featurizer, 5),
                                     ("vision_backbone.fused_featurizer.", policy.vision_backbone.fused_featurizer, 0)):
        with torch.no_grad():
            torch.testing.assert_close(module(x), reference_timm_features(weights, prefix, x, 16, n_prefix),
                                       atol=1e-4, rtol=1e-4)
    # DINOv2 gets ImageNet statistics, SigLIP 0.5 / 0.5; features concatenate on channels
    assert policy.config.vision[0].image_mean == [0.485, 0.456, 0.406]
    assert policy.config.vision[1].image_mean == [0.5, 0.5, 0.5]
    with torch.no_grad():
        assert policy.vision_backbone(torch.rand(1, 6, IMAGE, IMAGE)).shape == (1, 16, 80)

    image = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)  # any size: resized
    action = policy.predict_action(image, INSTRUCTIONS[0], unnorm_key="libero_spatial_no_noops")
    st = config["norm_stats"]["libero_spatial_no_noops"]["action"]
    assert action.shape == (7,)
    assert np.all(action[:6] >= np.array(st["q01"][:6]) - 1e-6) and np.all(action[:6] <= np.array(st["q99"][:6]) + 1e-6)
    assert -1 <= action[6] <= 1
    with pytest.raises(ValueError, match="bridge_orig"):
        policy.predict_action(image, INSTRUCTIONS[0], unnorm_key="nope")


def test_single_backbone_file_with_timm_gamma_names_loads(tmp_path):
    write_openvla_checkpoint(tmp_path, fused=False, sharded=False, ls_name="gamma")
    policy = OpenVLAPolicy.from_pretrained(tmp_path)
    assert policy.vision_backbone.fused_featurizer is None and policy.projector.num_layers == 2
    assert policy.dtype == torch.bfloat16  # the checkpoint's dtype by default
    action = policy.predict_action(np.zeros((56, 56, 3), np.uint8), "open the drawer", unnorm_key="bridge_orig")
    assert action.shape == (7,) and np.isfinite(action).all()


def test_unsupported_vision_model_is_named(tmp_path):
    write_openvla_checkpoint(tmp_path, fused=False, sharded=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["timm_model_ids"] = ["vit_huge_patch14_clip_quickgelu_378"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported timm vision model.*supported"):
        OpenVLAPolicy.from_pretrained(tmp_path)


def _drop_special_tokens(path, *names):
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    for name in names:
        cfg.pop(f"{name}_token", None)
    cfg_file.write_text(json.dumps(cfg))


def test_bf16_load_keeps_float32_rotary_frequencies(tmp_path):
    write_openvla_checkpoint(tmp_path, fused=False, sharded=False)
    ref = OpenVLAPolicy.from_pretrained(tmp_path, dtype=torch.float32)
    bf16 = OpenVLAPolicy.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    rope, rope_ref = bf16.language_model.model.rotary_emb, ref.language_model.model.rotary_emb
    assert rope.inv_freq.dtype == torch.float32 and torch.equal(rope.inv_freq, rope_ref.inv_freq)
    x = torch.zeros(1, 1, 4, dtype=torch.bfloat16)
    pos = torch.arange(200)[None]
    cos, _ = rope(x, pos)
    cos_ref, _ = rope_ref(x.float(), pos)
    assert (cos.float() - cos_ref).abs().max() < 1e-2  # only the final bf16 rounding
    obs = {"agentview_image": np.random.default_rng(1).integers(0, 255, (IMAGE, IMAGE, 3), dtype=np.uint8),
           "instruction": INSTRUCTIONS[0]}
    with torch.no_grad():
        logits = [p.prefill(p.process(p.parse(obs)), [p.config.prompt_suffix_ids]).logits.float()
                  for p in (ref, bf16)]
    torch.testing.assert_close(logits[1], logits[0], atol=0.1, rtol=0.05)  # bf16 tolerance


def test_a_tokenizer_without_pad_or_bos_takes_the_configs_ids(tmp_path):
    _, config = write_openvla_checkpoint(tmp_path, fused=False, sharded=False)
    _drop_special_tokens(tmp_path, "pad", "bos")
    policy = OpenVLAPolicy.from_pretrained(tmp_path, dtype=torch.float32)
    assert policy.tokenizer.pad_token_id == config["pad_token_id"]
    assert policy.tokenizer.bos_token_id == config["text_config"]["bos_token_id"]
    action = policy.predict_action(np.zeros((IMAGE, IMAGE, 3), np.uint8), "open the drawer", unnorm_key="bridge_orig")
    assert np.isfinite(action).all()


def test_a_tokenizer_without_pad_and_no_id_fails_at_load(tmp_path):
    write_openvla_checkpoint(tmp_path, fused=False, sharded=False)
    _drop_special_tokens(tmp_path, "pad")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("pad_token_id")
    cfg["text_config"].pop("pad_token_id", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no pad token"):
        OpenVLAPolicy.from_pretrained(tmp_path)


def test_dataset_statistics_json_is_read_and_libero_keys_match_without_no_noops(tmp_path):
    _, config = write_openvla_checkpoint(tmp_path, fused=False, sharded=False)
    stats = {"libero_goal_no_noops": config["norm_stats"]["bridge_orig"]}
    (tmp_path / "dataset_statistics.json").write_text(json.dumps(stats))
    policy = OpenVLAPolicy.from_pretrained(tmp_path, dtype=torch.float32)
    assert "libero_goal_no_noops" in policy.config.norm_stats
    image = np.zeros((IMAGE, IMAGE, 3), np.uint8)
    a = policy.predict_action(image, "open the drawer", unnorm_key="libero_goal")
    b = policy.predict_action(image, "open the drawer", unnorm_key="libero_goal_no_noops")
    np.testing.assert_array_equal(a, b)


def test_a_released_checkpoints_gripper_reaches_libero_in_robosuites_sign(tmp_path):
    """OpenVLA's LIBERO fine-tunes say 1 = open in [0, 1]; robosuite takes -1 = open, +1 = close. The
    env-facing calls map the gripper as OpenVLA's run_libero_eval does (binarise, invert)."""
    from fixtures.fake_libero import fake_libero

    from vla_accel.envs.libero_adapter import LiberoEnv

    write_openvla_checkpoint(tmp_path, fused=False, sharded=False)
    policy = OpenVLAPolicy.from_pretrained(tmp_path, dtype=torch.float32)
    policy.unnorm_key = "libero_spatial"  # resolves to libero_spatial_no_noops
    env = LiberoEnv("libero_spatial", 1, image_size=IMAGE, libero=fake_libero())
    try:
        obs, _ = env.reset(options={"init_state_id": 0})
        obs = {**obs, "instruction": env.instruction}
        raw = policy.predict_action(obs["agentview_image"], env.instruction)  # OpenVLA's own call: raw
        n_before = len(env._env.actions)
        env.step(policy.select_action(obs))
        sent = env._env.actions[n_before]
    finally:
        env.close()
    assert sent[6] == -np.sign(2 * raw[6] - 1) and sent[6] in (-1.0, 1.0)  # open (raw > 0.5) -> -1
    assert policy.config.gripper == "open_is_1"
    np.testing.assert_allclose(sent[:6], raw[:6], rtol=1e-6)


def test_gripper_conventions_map_open_to_minus_one():
    from vla_accel.policies.openvla.configuration_openvla import env_gripper

    raw = np.array([[0.1, 0.2, 0.3, 0, 0, 0, g] for g in (1.0, 0.7, 0.3, 0.0)], np.float32)
    np.testing.assert_array_equal(env_gripper(raw, "open_is_1")[:, 6], [-1, -1, 1, 1])
    np.testing.assert_array_equal(env_gripper(raw, "open_is_1")[:, :6], raw[:, :6])
    assert env_gripper(raw, "signed") is raw


def test_openvla_preprocessing_bicubic_resize_and_centre_crop_on_request(tmp_path):
    """OpenVLA resizes bicubic (its preprocessor config) and, for checkpoints fine-tuned with random crops,
    evaluates on the 0.9-area centre crop; neither is in config.json, so the crop is the caller's to say."""
    from vla_accel.policies import make_policy

    write_openvla_checkpoint(tmp_path, fused=False, sharded=False)
    plain = OpenVLAPolicy.from_pretrained(tmp_path, dtype=torch.float32)
    assert plain.processor.image_processor.interpolation == "bicubic"
    assert plain.processor.image_processor.crop_scale == 1.0
    cropped = make_policy({"type": "openvla", "path": str(tmp_path), "dtype": "float32", "center_crop": True}, None)
    assert cropped.processor.image_processor.crop_scale == 0.9
    image = np.random.default_rng(0).integers(0, 255, (1, 40, 40, 3), dtype=np.uint8)
    x = plain.processor.image_processor.to_float(image)
    ref = torch.nn.functional.interpolate(x, size=(IMAGE, IMAGE), mode="bicubic", align_corners=False,
                                          antialias=True)
    torch.testing.assert_close(plain.processor.image_processor(image)[:, :3],
                               plain.processor.image_processor.normalize(ref)[:, :3])


def test_a_converting_load_holds_one_stored_tensor_at_a_time(tmp_path, monkeypatch):
    """Issue 17, memory: each tensor is converted (bf16 on disk -> float32 here; -> the GPU in a real load)
    as it is read and its stored form dropped, so host memory never holds every shard in its stored form
    beside the converted copy (~15 GB extra for a 7B bf16 load). Counted with weak references to every
    tensor the file hands out: at each read at most the previous one may still be alive."""
    import weakref

    import vla_accel.policies.openvla_hf_layout as layout

    write_openvla_checkpoint(tmp_path, fused=True, sharded=True)
    alive, peak = weakref.WeakSet(), []
    real_open = layout.safe_open

    class Counting:
        def __init__(self, *a, **kw):
            self._f = real_open(*a, **kw)

        def __enter__(self):
            self._inner = self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def keys(self):
            return self._inner.keys()

        def get_slice(self, key):
            return self._inner.get_slice(key)

        def get_tensor(self, key):
            peak.append(len(alive))  # stored-form tensors still referenced when the next one is read
            t = self._inner.get_tensor(key)
            alive.add(t)
            return t

    monkeypatch.setattr(layout, "safe_open", Counting)
    policy = OpenVLAPolicy.from_pretrained(tmp_path, dtype=torch.float32)
    assert policy.dtype == torch.float32 and len(peak) > 50
    assert max(peak) <= 1
