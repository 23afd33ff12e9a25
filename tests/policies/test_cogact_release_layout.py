"""A TINY checkpoint written in the released CogACT layout (config.json, dataset_statistics.json,
checkpoints/CogACT-Small.pt: torch.save({"model": {action_model, vision_backbone, llm_backbone,
projector}}) with CogACT's key names, float32 as the release) loads into our CogACT-style policy. Every
tensor arrives unchanged, and the cognition feature and the whole DDIM + CFG action chunk match a
reference written here from the raw state dict and the facts of /work/shared/cogact_release.md (not
from our modules). The Llama-2 tokenizer / config come from a separate directory, as a user's local
copy of Llama-2-7b-hf would."""

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from vla_accel.policies.cogact.modeling_cogact import CogACTPolicy
from vla_accel.policies.common.action_tokenizer import compute_norm_stats

IMAGE, PATCH, DEPTH, CHUNK, DIT_W, DIT_DEPTH, DIT_HEADS, LLM_W = 56, 14, 3, 16, 32, 2, 4, 64
INSTRUCTION = "Pick up the red cube"
ABAR = [0.999369, 0.966717, 0.889103, 0.774006, 0.632516, 0.478265, 0.326115, 0.190727, 0.085146, 0.019544]


# --- writing the tiny release ----------------------------------------------------------------------
def write_llama_dir(path):
    """A Llama-2-like tokenizer (sentencepiece-style "▁" pieces, <unk>/<s>/</s> = 0/1/2, BOS template) and
    a LlamaConfig, as a local copy of meta-llama/Llama-2-7b-hf holds them (no <PAD>: prismatic adds it)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    corpus = [f"In: What action should the robot take to {t}?\nOut:" for t in
              ("pick up the red cube", "open the drawer", "put the bowl on the plate", "move the spoon")]
    tok.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"],
                                                            show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(path))
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=LLM_W, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2).to_dict()
    cfg["torch_dtype"] = "float16"  # as Llama-2-7b-hf's config.json says; our load must not follow it
    (path / "config.json").write_text(json.dumps(cfg))
    return len(fast)


def timm_vit(prefix, width, mlp, *, prefix_tokens, layer_scale, map_head, r):
    w = {f"{prefix}patch_embed.proj.weight": r(width, 3, PATCH, PATCH), f"{prefix}patch_embed.proj.bias": r(width),
         f"{prefix}pos_embed": r(1, (IMAGE // PATCH) ** 2, width),
         f"{prefix}norm.weight": 1 + r(width), f"{prefix}norm.bias": r(width)}
    if prefix_tokens:
        w[f"{prefix}cls_token"], w[f"{prefix}reg_token"] = r(1, 1, width), r(1, 4, width)
    for i in range(DEPTH):
        b = f"{prefix}blocks.{i}."
        for name, shape in (("norm1", (width,)), ("norm2", (width,))):
            w[b + name + ".weight"], w[b + name + ".bias"] = 1 + r(*shape), r(*shape)
        for name, (o, n) in (("attn.qkv", (3 * width, width)), ("attn.proj", (width, width)),
                             ("mlp.fc1", (mlp, width)), ("mlp.fc2", (width, mlp))):
            w[b + name + ".weight"], w[b + name + ".bias"] = r(o, n), r(o)
        if layer_scale:  # timm's own name, as CogACT's .pt stores it
            w[b + "ls1.gamma"], w[b + "ls2.gamma"] = 1 + r(width), 1 + r(width)
    if map_head:  # SigLIP's attention-pool head: stored, never run
        w.update({f"{prefix}attn_pool.latent": r(1, 1, width), f"{prefix}attn_pool.q.weight": r(width, width),
                  f"{prefix}attn_pool.kv.weight": r(2 * width, width), f"{prefix}attn_pool.mlp.fc1.weight": r(mlp, width)})
    return w


def dit_state(r):
    w = {"net.positional_embedding": r(CHUNK + 1, DIT_W),
         "net.history_embedder.linear.weight": r(DIT_W, 7), "net.history_embedder.linear.bias": r(DIT_W),
         "net.x_embedder.linear.weight": r(DIT_W, 7), "net.x_embedder.linear.bias": r(DIT_W),
         "net.t_embedder.mlp.0.weight": r(DIT_W, 256), "net.t_embedder.mlp.0.bias": r(DIT_W),
         "net.t_embedder.mlp.2.weight": r(DIT_W, DIT_W), "net.t_embedder.mlp.2.bias": r(DIT_W),
         "net.z_embedder.uncondition": r(1, LLM_W),
         "net.z_embedder.linear.weight": r(DIT_W, LLM_W), "net.z_embedder.linear.bias": r(DIT_W)}
    for i in range(DIT_DEPTH):
        b = f"net.blocks.{i}."
        for name, (o, n) in (("attn.qkv", (3 * DIT_W, DIT_W)), ("attn.proj", (DIT_W, DIT_W)),
                             ("mlp.fc1", (4 * DIT_W, DIT_W)), ("mlp.fc2", (DIT_W, 4 * DIT_W))):
            w[b + name + ".weight"], w[b + name + ".bias"] = r(o, n), r(o)
    w["net.final_layer.linear.weight"], w["net.final_layer.linear.bias"] = r(7, DIT_W), r(7)
    return w


def llm_state(vocab, r):
    w = {"llm.model.embed_tokens.weight": r(vocab, LLM_W) * 10, "llm.model.norm.weight": 1 + r(LLM_W),
         "llm.lm_head.weight": r(vocab, LLM_W)}
    for i in range(3):
        b = f"llm.model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w[b + f"self_attn.{name}.weight"] = r(LLM_W, LLM_W) * 4
        w[b + "mlp.gate_proj.weight"], w[b + "mlp.up_proj.weight"] = r(128, LLM_W) * 4, r(128, LLM_W) * 4
        w[b + "mlp.down_proj.weight"] = r(LLM_W, 128) * 4
        w[b + "input_layernorm.weight"], w[b + "post_attention_layernorm.weight"] = 1 + r(LLM_W), 1 + r(LLM_W)
    return w


def release_groups(n_tok):
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen) * 0.05  # noqa: E731
    vision = {**timm_vit("dino_featurizer.", 32, 64, prefix_tokens=True, layer_scale=True, map_head=False, r=r),
              **timm_vit("siglip_featurizer.", 48, 96, prefix_tokens=False, layer_scale=False, map_head=True, r=r)}
    vocab = ((n_tok + 1 + 63) // 64) * 64  # prismatic: + <PAD>, padded to a multiple of 64
    projector = {"projector.0.weight": r(320, 80) * 4, "projector.0.bias": r(320),
                 "projector.2.weight": r(LLM_W, 320) * 4, "projector.2.bias": r(LLM_W),
                 "projector.4.weight": r(LLM_W, LLM_W) * 4, "projector.4.bias": r(LLM_W)}
    groups = OrderedDict([("action_model", dit_state(r)), ("vision_backbone", vision),
                          ("llm_backbone", llm_state(vocab, r)), ("projector", projector)])
    return OrderedDict((k, OrderedDict((n, t.float().contiguous()) for n, t in v.items())) for k, v in groups.items())


def release_config():
    keys = {"action_dim": 7, "action_model_type": "DiT-S", "data_root_dir": "/data", "future_action_window_size": 15,
            "hf_token": ".hf_token", "image_aug": False, "is_resume": False, "load_all_data_for_training": True,
            "past_action_window_size": 0, "pretrained_checkpoint": None, "repeated_diffusion_steps": 8,
            "resume_epoch": None, "resume_step": None, "run_id": "tiny", "run_id_note": None, "run_root_dir": "runs",
            "save_interval": 2500, "seed": 42, "trackers": ["jsonl"], "use_ema": False, "wandb_entity": None,
            "wandb_project": None}
    keys["vla"] = {"type": "prism-dinosiglip-224px+oxe+diffusion", "vla_id": "prism-dinosiglip-224px+oxe+diffusion",
                   "base_vlm": "prism-dinosiglip-224px+7b", "data_mix": "bridge", "train_strategy": "fsdp-full-shard"}
    return dict(sorted(keys.items()))


def write_release(root, groups=None, config=None, name="CogACT-Small.pt"):
    llama = root / "llama2"
    n_tok = write_llama_dir(llama)
    groups = groups if groups is not None else release_groups(n_tok)
    ckpt = root / "release"
    (ckpt / "checkpoints").mkdir(parents=True, exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps(config or release_config(), indent=2))
    rng = np.random.default_rng(0)
    stats = {"bridge_orig": compute_norm_stats(rng.uniform(-0.4, 0.6, (200, 7)), n_trajectories=3),
             "fractal20220817_data": compute_norm_stats(rng.uniform(-1, 1, (200, 7)), n_trajectories=3)}
    for s in stats.values():
        s["proprio"] = {k: v for k, v in s["action"].items() if k != "mask"}
    (ckpt / "dataset_statistics.json").write_text(json.dumps(stats, indent=2))
    torch.save({"model": groups}, str(ckpt / "checkpoints" / name))
    return ckpt, llama, groups, stats


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("cogact"))


@pytest.fixture(scope="module")
def policy(release):
    ckpt, llama, _, _ = release
    return CogACTPolicy.from_pretrained(ckpt, tokenizer_path=llama, dit_heads=DIT_HEADS)


# --- the reference, from the raw tensors -----------------------------------------------------------
def ref_vit(w, prefix, x, heads, n_prefix):
    """timm ViT: patches + pos_embed, then [cls, reg] (no position), pre-norm blocks (LayerScale on DINO)
    through block depth - 2, prefix tokens dropped, no final norm."""
    g = lambda k: w[prefix + k]  # noqa: E731
    h = F.conv2d(x, g("patch_embed.proj.weight"), g("patch_embed.proj.bias"), stride=PATCH)
    h = h.flatten(2).transpose(1, 2) + g("pos_embed")
    if n_prefix:
        h = torch.cat([g("cls_token").expand(len(x), -1, -1), g("reg_token").expand(len(x), -1, -1), h], dim=1)
    d = h.shape[-1]
    for i in range(DEPTH - 1):
        b = f"blocks.{i}."
        ls = lambda n: g(b + n + ".gamma") if prefix + b + n + ".gamma" in w else 1.0  # noqa: E731
        y = F.layer_norm(h, (d,), g(b + "norm1.weight"), g(b + "norm1.bias"), eps=1e-6)
        h = h + ls("ls1") * ref_attention(y, g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias"),
                                          g(b + "attn.proj.weight"), g(b + "attn.proj.bias"), heads)
        y = F.layer_norm(h, (d,), g(b + "norm2.weight"), g(b + "norm2.bias"), eps=1e-6)
        y = F.gelu(F.linear(y, g(b + "mlp.fc1.weight"), g(b + "mlp.fc1.bias")))
        h = h + ls("ls2") * F.linear(y, g(b + "mlp.fc2.weight"), g(b + "mlp.fc2.bias"))
    return h[:, n_prefix:]


def ref_attention(y, wqkv, bqkv, wo, bo, heads):
    """Bidirectional multi-head attention with a fused qkv (q, k, v along the output dim)."""
    b, n, d = y.shape
    q, k, v = F.linear(y, wqkv, bqkv).split(d, dim=-1)
    split = lambda t: t.reshape(b, n, heads, d // heads).transpose(1, 2)  # noqa: E731
    att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ split(v)
    return F.linear(att.transpose(1, 2).reshape(b, n, d), wo, bo)


def ref_rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def ref_llama(w, embeds, heads=4, skip=()):
    """Llama-2 forward (RMSNorm eps 1e-5, RoPE theta 1e4 on rotate-half pairs, causal attention, SwiGLU)
    -> the last layer's output after the final norm (HF's last hidden state)."""
    t, d = embeds.shape[1], embeds.shape[2]
    hd = d // heads
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rot = lambda x: x * cos + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin  # noqa: E731
    h = embeds
    for i in range(3):
        if i in skip:
            continue
        g = lambda k: w[f"llm.model.layers.{i}.{k}"]  # noqa: E731
        y = ref_rms(h, g("input_layernorm.weight"))
        q, k, v = (F.linear(y, g(f"self_attn.{n}_proj.weight")).reshape(1, t, heads, hd).transpose(1, 2)
                   for n in "qkv")
        scores = rot(q) @ rot(k).transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        att = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(1, t, d)
        h = h + F.linear(att, g("self_attn.o_proj.weight"))
        y = ref_rms(h, g("post_attention_layernorm.weight"))
        h = h + F.linear(F.silu(F.linear(y, g("mlp.gate_proj.weight"))) * F.linear(y, g("mlp.up_proj.weight")),
                         g("mlp.down_proj.weight"))
    return ref_rms(h, w["llm.model.norm.weight"])


def ref_prompt_ids(llama_dir, instruction):
    """CogACT's ids: the prompt with BOS, then "▁" (29871 in Llama-2) and </s> (2), the cognition token."""
    tok = PreTrainedTokenizerFast.from_pretrained(str(llama_dir))
    prompt = f"In: What action should the robot take to {instruction.lower()}?\nOut:"
    return tok(prompt)["input_ids"] + [tok.convert_tokens_to_ids("\u2581"), tok.eos_token_id]


def ref_cognition(groups, llama_dir, image_uint8, skip=()):
    vb, pj, lm = groups["vision_backbone"], groups["projector"], groups["llm_backbone"]
    x = torch.as_tensor(image_uint8).permute(2, 0, 1)[None].float() / 255.0
    dino = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    siglip = (x - 0.5) / 0.5
    feats = torch.cat([ref_vit(vb, "dino_featurizer.", dino, 16, 5), ref_vit(vb, "siglip_featurizer.", siglip, 16, 0)], 2)
    p = F.gelu(F.linear(feats, pj["projector.0.weight"], pj["projector.0.bias"]))
    p = F.gelu(F.linear(p, pj["projector.2.weight"], pj["projector.2.bias"]))
    p = F.linear(p, pj["projector.4.weight"], pj["projector.4.bias"])
    ids = torch.tensor(ref_prompt_ids(llama_dir, INSTRUCTION))
    emb = lm["llm.model.embed_tokens.weight"][ids][None]
    embeds = torch.cat([emb[:, :1], p, emb[:, 1:]], dim=1)  # [BOS][patches][the rest]
    return ref_llama(lm, embeds, skip=skip)[:, -1]  # the last position: </s>


def ref_dit(w, x, t, z):
    """CogACT's DiT: [t_emb + z_emb, x_emb...] + positional_embedding, pre-norm blocks without affine
    LayerNorms or modulation, tanh-GELU MLP, final LN + linear, condition token dropped."""
    g = lambda k: w["net." + k]  # noqa: E731
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    temb = F.linear(F.silu(F.linear(temb, g("t_embedder.mlp.0.weight"), g("t_embedder.mlp.0.bias"))),
                    g("t_embedder.mlp.2.weight"), g("t_embedder.mlp.2.bias"))
    c = temb[:, None] + F.linear(z, g("z_embedder.linear.weight"), g("z_embedder.linear.bias"))  # (N, 1, H)
    h = torch.cat([c, F.linear(x, g("x_embedder.linear.weight"), g("x_embedder.linear.bias"))], 1)
    h = h + g("positional_embedding")
    for i in range(DIT_DEPTH):
        b = f"blocks.{i}."
        y = F.layer_norm(h, (DIT_W,), eps=1e-6)
        h = h + ref_attention(y, g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias"), g(b + "attn.proj.weight"),
                              g(b + "attn.proj.bias"), DIT_HEADS)
        y = F.gelu(F.linear(F.layer_norm(h, (DIT_W,), eps=1e-6), g(b + "mlp.fc1.weight"), g(b + "mlp.fc1.bias")),
                   approximate="tanh")
        h = h + F.linear(y, g(b + "mlp.fc2.weight"), g(b + "mlp.fc2.bias"))
    out = F.linear(F.layer_norm(h, (DIT_W,), eps=1e-6), g("final_layer.linear.weight"), g("final_layer.linear.bias"))
    return out[:, 1:]


def ref_ddim_tables():
    """improved-diffusion's SpacedDiffusion(100 -> 'ddim10') of the squaredcos_cap_v2 betas, float64."""
    abar_fn = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - abar_fn((i + 1) / 100) / abar_fn(i / 100), 0.999) for i in range(100)])
    ac, last, new_betas = np.cumprod(1.0 - betas), 1.0, []
    kept = list(range(0, 100, 10))
    for i in kept:
        new_betas.append(1 - ac[i] / last)
        last = ac[i]
    abar = np.cumprod(1.0 - np.array(new_betas))
    return kept, abar, np.append(1.0, abar[:-1])


def ref_sample(w, cognition, noise, cfg_scale=1.5):
    """CogACT's DDIM (eta 0, no clipping) with CFG over [noise; noise] and [cognition; uncondition]."""
    kept, abar, abar_prev = ref_ddim_tables()
    f32 = lambda a: torch.tensor(a, dtype=torch.float64).float()  # noqa: E731  (float64 tables, used as float32)
    x, trajectory = torch.cat([noise, noise], 0), []
    z = torch.cat([cognition[:, None], w["net.z_embedder.uncondition"].expand(len(noise), -1)[:, None]], 0)
    for i in reversed(range(10)):
        half = x[: len(noise)]
        eps = ref_dit(w, torch.cat([half, half], 0), torch.full((2 * len(noise),), kept[i]), z)
        e_c, e_u = eps.chunk(2)
        eps = torch.cat([e_u + cfg_scale * (e_c - e_u)] * 2, 0)
        recip, recipm1 = f32(np.sqrt(1.0 / abar[i])), f32(np.sqrt(1.0 / abar[i] - 1))
        x0 = recip * x - recipm1 * eps
        eps = (recip * x - x0) / recipm1
        ap = f32(abar_prev[i])
        x = x0 * torch.sqrt(ap) + torch.sqrt(1 - ap) * eps
        trajectory.append(x[: len(noise)])
    return x[: len(noise)], trajectory


def ref_unnormalize(samples, stats):
    """clip to [-1, 1], binarise the gripper (dim 6) at 0.5, q01/q99 on the masked dims."""
    a = np.clip(samples.numpy(), -1, 1)
    a[..., 6] = np.where(a[..., 6] < 0.5, 0, 1)
    q01, q99, mask = (np.array(stats[k]) for k in ("q01", "q99", "mask"))
    return np.where(mask, 0.5 * (a + 1) * (q99 - q01) + q01, a)


def image(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (IMAGE, IMAGE, 3), dtype=np.uint8)


def obs(seed=0):
    return {"agentview_image": image(seed), "instruction": INSTRUCTION}


# --- the tests -------------------------------------------------------------------------------------
def test_every_tensor_arrives_unchanged(release, policy):
    _, _, groups, stats = release
    ours = policy.state_dict()
    names = {"dino_featurizer.": "vision_backbone.featurizer.", "siglip_featurizer.": "vision_backbone.fused_featurizer."}
    for key, t in groups["vision_backbone"].items():
        if ".attn_pool." in key:
            continue
        prefix = next(p for p in names if key.startswith(p))
        torch.testing.assert_close(ours[names[prefix] + key[len(prefix):].replace(".gamma", ".scale_factor")], t,
                                   rtol=0, atol=0)
    for i, fc in ((0, 1), (2, 2), (4, 3)):
        for p in ("weight", "bias"):
            assert torch.equal(ours[f"projector.fc{fc}.{p}"], groups["projector"][f"projector.{i}.{p}"])
    for key, t in groups["llm_backbone"].items():
        assert torch.equal(ours["language_model." + key[len("llm."):]], t), key
    dit = groups["action_model"]
    pairs = {"action_model.pos_embed": dit["net.positional_embedding"][None],
             "action_model.null_condition": dit["net.z_embedder.uncondition"]}
    for key, t in dit.items():
        for theirs, mine in (("net.x_embedder.linear.", "x_embedder."), ("net.z_embedder.linear.", "z_embedder."),
                             ("net.t_embedder.", "t_embedder."), ("net.blocks.", "blocks."),
                             ("net.final_layer.linear.", "final_proj.")):
            if key.startswith(theirs):
                pairs["action_model." + mine + key[len(theirs):]] = t
    for key, t in pairs.items():
        assert torch.equal(ours[key], t), key
    dit_keys = {k for k in ours if k.startswith("action_model.")}
    assert dit_keys == set(pairs)  # nothing of ours is left unloaded (no affine norms, no extra tokens)
    assert policy.dtype == torch.float32 and policy.config.norm_stats == stats
    assert policy.config.dit_heads == DIT_HEADS and policy.config.chunk_size == CHUNK
    assert not policy.action_model.training  # eval(): CogACT's DiT drops conditions at random in train mode


def test_prompt_ids_and_cognition_feature_match_the_reference(release, policy):
    _, llama, groups, _ = release
    inputs = policy.process(policy.parse(obs()))
    batch = policy.prompt_batch(inputs, policy.cognition_suffix(1))
    ids = ref_prompt_ids(llama, INSTRUCTION)
    assert batch.input_ids[0].tolist() == ids[:1] + [policy.tokenizer.pad_token_id] * 16 + ids[1:]
    assert policy.tokenizer.convert_ids_to_tokens(ids[-2:]) == ["\u2581", "</s>"]
    assert policy.tokenizer.pad_token == "<PAD>" and policy.tokenizer.pad_token_id == len(policy.tokenizer) - 1
    with torch.no_grad():
        ours = policy.cognition_feature(inputs)
    torch.testing.assert_close(ours, ref_cognition(groups, llama, image()), atol=1e-4, rtol=1e-4)


def test_dit_forward_and_action_chunk_match_the_reference(release, policy):
    _, llama, groups, stats = release
    w = groups["action_model"]
    gen = torch.Generator().manual_seed(1)
    x, z = torch.randn(3, CHUNK, 7, generator=gen), torch.randn(3, 1, LLM_W, generator=gen)
    t = torch.tensor([0, 40, 90])
    with torch.no_grad():
        torch.testing.assert_close(policy.action_model(x, t, z[:, 0]), ref_dit(w, x, t, z), atol=1e-5, rtol=1e-5)
    # DDIM: CogACT's alpha-bar at the kept steps 0, 10, ..., 90
    np.testing.assert_allclose(policy.diffusion.alphas_cumprod[::10].numpy(), ABAR, atol=1e-6)
    noise = torch.randn(1, CHUNK, 7, generator=gen)
    chunk = policy.predict_action_chunk(obs(), noise=noise, unnorm_key="bridge_orig")
    cognition = ref_cognition(groups, llama, image())
    samples, trajectory = ref_sample(w, cognition, noise)
    steps, step = [], policy.diffusion.step
    policy.diffusion.step = lambda *a: steps.append(step(*a)) or steps[-1]  # each x_t, before the final clamp
    try:
        with torch.no_grad():
            ours = policy.sample_actions(policy.cognition_feature(policy.process(policy.parse(obs()))), noise)
    finally:
        del policy.diffusion.step
    assert len(steps) == 10
    for mine, theirs in zip(steps, trajectory):  # unclipped (|x| up to ~20 with random weights)
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours, samples.clamp(-1, 1), atol=1e-4, rtol=1e-4)
    expected = ref_unnormalize(samples, stats["bridge_orig"]["action"])
    np.testing.assert_allclose(chunk, expected, atol=1e-4)
    assert set(np.unique(chunk[0, :, 6])) == {0.0, 1.0}  # the gripper is binarised, not un-normalised


def test_ddim_without_clipping_is_improved_diffusions_arithmetic():
    from vla_accel.policies.cogact.ddim import DDIM

    kept, abar, _ = ref_ddim_tables()
    np.testing.assert_allclose(abar, ABAR, atol=1e-6)
    ddim = DDIM(100, clip_sample=False)
    x, eps = torch.randn(2, 16, 7) * 3, torch.randn(2, 16, 7)
    out = ddim.step(eps, 90, 80, x)
    recip, recipm1 = np.float32(np.sqrt(1 / abar[9])), np.float32(np.sqrt(1 / abar[9] - 1))
    x0 = recip * x - recipm1 * eps  # unclipped: far outside [-1, 1] here
    assert x0.abs().max() > 1
    ap = torch.tensor(abar[8], dtype=torch.float64).float()
    torch.testing.assert_close(out, x0 * ap.sqrt() + (1 - ap).sqrt() * ((recip * x - x0) / recipm1), rtol=0, atol=0)


def test_select_action_ensembles_as_cogacts_simulation_scripts(release):
    ckpt, llama, _, _ = release
    p = CogACTPolicy.from_pretrained(ckpt, tokenizer_path=llama, dit_heads=DIT_HEADS)
    p.unnorm_key = "bridge_orig"
    assert p.config.use_ensemble and p.config.ensemble_alpha == 0.1 and p.config.cfg_scale == 1.5
    p.reset()
    a0, a1 = p.select_action(obs(0)), p.select_action(obs(1))
    assert a0.shape == a1.shape == (7,) and len(p.ensembler.history) == 2


# --- the accelerator on the loaded model -----------------------------------------------------------
def test_token_pruning_layer_skipping_and_head_cache_work_on_the_loaded_model(release):
    from vla_accel.accel.accelerate import accelerate
    from vla_accel.accel.config import AccelConfig
    from vla_accel.accel.head_cache import head_cache

    ckpt, llama, groups, _ = release
    policy = CogACTPolicy.from_pretrained(ckpt, tokenizer_path=llama, dit_heads=DIT_HEADS)  # its own runner
    noise = torch.randn(1, CHUNK, 7, generator=torch.Generator().manual_seed(2))
    accelerate(policy, "none")
    ref = policy.predict_action_chunk(obs(), noise=noise, unnorm_key="bridge_orig")
    try:
        accelerate(policy, "vla_pruner", keep_ratio=0.5, prune_layer=1, params={"window": 1})
        for step in range(2):
            chunk = policy.predict_action_chunk(obs(step), noise=noise, unnorm_key="bridge_orig")
            assert chunk.shape == (1, CHUNK, 7) and np.isfinite(chunk).all()
        assert policy.runner.stats.pruned and policy.runner.stats.kept_visual.shape == (1, 8)

        accelerate(policy, AccelConfig.from_dict({"skip_layers": [1]}))
        with torch.no_grad():  # the skipped layer is the reference Llama without layer 1
            cog = policy.cognition_feature(policy.process(policy.parse(obs())))
        torch.testing.assert_close(cog, ref_cognition(groups, llama, image(), skip={1}), atol=1e-4, rtol=1e-4)

        accelerate(policy, AccelConfig.from_dict({"head_cache_interval": 1}))
        np.testing.assert_allclose(policy.predict_action_chunk(obs(), noise=noise, unnorm_key="bridge_orig"), ref,
                                   atol=1e-6)
        accelerate(policy, AccelConfig.from_dict({"head_cache_interval": 2}))
        cache = head_cache(policy)
        cached = policy.predict_action_chunk(obs(), noise=noise, unnorm_key="bridge_orig")
        assert cache.step == 10 and cache.full_steps == 5 and len(cache._store) == 2 * DIT_DEPTH
        assert np.isfinite(cached).all()
    finally:
        accelerate(policy, "none")
    np.testing.assert_array_equal(policy.predict_action_chunk(obs(), noise=noise, unnorm_key="bridge_orig"), ref)


# --- conversion ------------------------------------------------------------------------------------
def test_conversion_to_safetensors_loads_with_identical_outputs(release, policy, tmp_path):
    import runpy
    import sys

    ckpt, llama, _, _ = release
    out = tmp_path / "converted"
    argv = sys.argv
    sys.argv = ["convert_cogact.py", str(ckpt), str(out), "--tokenizer-path", str(llama), "--dit-heads", str(DIT_HEADS)]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "convert_cogact.py"),
                           run_name="__main__")
    finally:
        sys.argv = argv
    assert done.value.code == 0
    assert (out / "model.safetensors").is_file() and not list(out.rglob("*.pt"))
    converted = CogACTPolicy.from_pretrained(out)
    theirs, ours = policy.state_dict(), converted.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert converted.config.to_dict() == json.loads(json.dumps(policy.config.to_dict()))  # as JSON stores it
    noise = torch.randn(1, CHUNK, 7, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(converted.predict_action_chunk(obs(), noise=noise, unnorm_key="bridge_orig"),
                                  policy.predict_action_chunk(obs(), noise=noise, unnorm_key="bridge_orig"))
    with pytest.raises(ValueError, match="for released CogACT checkpoints"):
        CogACTPolicy.from_pretrained(out, tokenizer_path=llama)
    half, half_release = (CogACTPolicy.from_pretrained(p, dtype=torch.bfloat16, **kw) for p, kw in
                          ((out, {}), (ckpt, {"tokenizer_path": llama, "dit_heads": DIT_HEADS})))
    for p in (half, half_release):  # bf16 weights, float32 rotary frequencies, on both paths
        assert p.dtype == torch.bfloat16 and p.language_model.model.rotary_emb.inv_freq.dtype == torch.float32
    np.testing.assert_array_equal(half.predict_action_chunk(obs(), noise=noise, unnorm_key="bridge_orig"),
                                  half_release.predict_action_chunk(obs(), noise=noise, unnorm_key="bridge_orig"))


def test_the_release_preset_builds_through_make_policy(release):
    from omegaconf import OmegaConf
    from fixtures.tiny_models import policy_yaml

    from vla_accel.policies import make_policy

    ckpt, llama, _, _ = release
    cfg = OmegaConf.merge(policy_yaml("cogact_release"), {"path": str(ckpt), "tokenizer_path": str(llama),
                                                          "dit_heads": DIT_HEADS, "device": "cpu",
                                                          "unnorm_key": "fractal20220817_data", "ensemble_horizon": 2})
    p = make_policy(cfg, env=None)
    assert isinstance(p, CogACTPolicy) and p.config.ensemble_horizon == 2 and p.config.binarize_gripper
    assert p.select_action(obs()).shape == (7,)
    with pytest.raises(ValueError, match="tokenizer_path"):
        make_policy(OmegaConf.merge(cfg, {"tokenizer_path": None}), env=None)


# --- what is refused -------------------------------------------------------------------------------
class NotATensor:
    pass


def _rewrite(ckpt, mutate=None, payload=None):
    pt = next((ckpt / "checkpoints").glob("*.pt"))
    if payload is None:
        payload = torch.load(str(pt), weights_only=True)
        mutate(payload["model"])
    torch.save(payload, str(pt))


@pytest.mark.parametrize("case, match", [
    ("pickled_object", "refused -- it needs more than plain tensors"),
    ("adaln", r"adaLN_modulation.*not supported"),
    ("affine_norm", r"norm1\.weight.*no affine LayerNorms"),
    ("ema", "ema_diffusion"),
    ("base_vlm", "vla.base_vlm 'prism-clip-224px\\+7b' is not supported"),
    ("no_tokenizer", "holds no Llama-2 tokenizer"),
    ("heads", "none of CogACT's"),
    ("learn_sigma", "learn_sigma"),
])
def test_what_is_not_the_release_is_refused_by_name(tmp_path, case, match):
    ckpt, llama, groups, _ = write_release(tmp_path)
    kwargs = {"tokenizer_path": llama, "dit_heads": DIT_HEADS}
    if case == "pickled_object":
        _rewrite(ckpt, payload={"model": groups, "extra": NotATensor()})
    elif case == "adaln":
        _rewrite(ckpt, lambda m: m["action_model"].update({"net.blocks.0.adaLN_modulation.1.weight": torch.zeros(6, 2)}))
    elif case == "affine_norm":
        _rewrite(ckpt, lambda m: m["action_model"].update({"net.blocks.0.norm1.weight": torch.ones(DIT_W)}))
    elif case == "ema":
        _rewrite(ckpt, lambda m: m.update({"ema_diffusion": dict(m["action_model"])}))
    elif case == "base_vlm":
        cfg = release_config()
        cfg["vla"]["base_vlm"] = "prism-clip-224px+7b"
        (ckpt / "config.json").write_text(json.dumps(cfg))
    elif case == "no_tokenizer":
        kwargs.pop("tokenizer_path")
    elif case == "heads":
        kwargs.pop("dit_heads")
    elif case == "learn_sigma":
        _rewrite(ckpt, lambda m: m["action_model"].update({"net.final_layer.linear.weight": torch.zeros(14, DIT_W),
                                                           "net.final_layer.linear.bias": torch.zeros(14)}))
    with pytest.raises(ValueError, match=match):
        CogACTPolicy.from_pretrained(ckpt, **kwargs)


def test_the_pt_file_itself_and_the_released_dit_sizes(release):
    from vla_accel.policies.cogact_release_layout import dit_num_heads

    ckpt, llama, _, _ = release
    p = CogACTPolicy.from_pretrained(next((ckpt / "checkpoints").glob("*.pt")), tokenizer_path=llama,
                                     llm_config=llama / "config.json", dit_heads=DIT_HEADS)
    assert p.config.dit_width == DIT_W
    assert dit_num_heads(768, 12, "DiT-B", None) == 12 and dit_num_heads(384, 6, None, None) == 4
    assert dit_num_heads(1024, 24, "DiT-L", None) == 16
    with pytest.raises(ValueError, match="says action_model_type 'DiT-B' but the weights are DiT-S"):
        dit_num_heads(384, 6, "DiT-B", None)
