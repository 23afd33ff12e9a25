"""Load the published OpenVLA Hugging Face checkpoint layout into our OpenVLA-style model.

What the layout is (openvla/openvla: prismatic/extern/hf/{configuration,modeling}_prismatic.py):
config.json has model_type "openvla", vision_backbone_id, llm_backbone_id, arch_specifier,
use_fused_vision_backbone, image_sizes, timm_model_ids, timm_override_act_layers,
image_resize_strategy, text_config (a LlamaConfig dict), pad_token_id, pad_to_multiple_of,
norm_stats, n_action_bins. Weights (model.safetensors or shards + model.safetensors.index.json):
  vision_backbone.featurizer.*        timm ViT (DINOv2 ViT-L/14 with 4 registers): patch_embed.proj,
                                      cls_token, reg_token, pos_embed, blocks.N.{norm1, attn.qkv,
                                      attn.proj, ls1.scale_factor, norm2, mlp.fc1, mlp.fc2,
                                      ls2.scale_factor}, norm
  vision_backbone.fused_featurizer.*  timm ViT (SigLIP So400m/14, no class token, MAP head attn_pool.*)
  projector.fc1/fc2/fc3               the fused GELU MLP projector
  language_model.model.*, language_model.lm_head.*   LlamaForCausalLM
Our modules carry the same names, so the mapping is: identity, timm's `ls*.gamma` -> `ls*.scale_factor`,
and dropping what OpenVLA never runs (SigLIP's `attn_pool.*` MAP head, `head.*`, `fc_norm.*`).
Encoder sizes are read from the weights' shapes; head counts and pixel statistics from the timm model
id. docs/openvla_checkpoint_layout.md lists what is and is not supported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import PreTrainedTokenizerFast

from vla_accel.policies.common.vision import ViTConfig
from vla_accel.policies.common.vlm import assign_exact_state

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
SIGLIP = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
OPENAI_CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])

# timm model-id prefix -> (attention heads, pixel mean/std). Heads cannot be read from the weights.
TIMM_FAMILIES: dict[str, tuple[int, tuple[list[float], list[float]]]] = {
    "vit_large_patch14_reg4_dinov2": (16, IMAGENET),
    "vit_large_patch14_dinov2": (16, IMAGENET),
    "vit_so400m_patch14_siglip": (16, SIGLIP),
    "vit_base_patch16_siglip": (12, SIGLIP),
    "vit_large_patch14_clip": (16, OPENAI_CLIP),
    "vit_large_patch16_224": (16, IMAGENET),
}
ARCH_PROJECTOR_LAYERS = {"fused-gelu-mlp": 3, "gelu-mlp": 2}
IGNORED_PREFIXES = ("attn_pool.", "head.", "fc_norm.")  # never run by OpenVLA (patch features only)
SUPPORTED_LLMS = ("llama",)
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def is_openvla_hf_config(cfg: dict[str, Any]) -> bool:
    return cfg.get("model_type") == "openvla"


def weight_files(path: Path) -> list[Path]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    index = path / "model.safetensors.index.json"
    names = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    missing = [str(path / n) for n in names if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"missing weights file(s) {missing}")
    return [path / n for n in names]


def checkpoint_dtype(files: list[Path]) -> torch.dtype:
    """The dtype the checkpoint stores its weights in (its first tensor's)."""
    with safe_open(str(files[0]), framework="pt") as f:
        name = f.get_slice(next(iter(f.keys()))).get_dtype()  # read from the header, no tensor loaded
    if name not in SAFETENSORS_DTYPES:
        raise ValueError(f"{files[0]}: unsupported weight dtype {name}; supported: {sorted(SAFETENSORS_DTYPES)}")
    return SAFETENSORS_DTYPES[name]


def read_weights(path: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                 ) -> dict[str, torch.Tensor]:
    """Every tensor, each put on ``device`` in ``dtype`` as it is read (None: as stored), so that host
    memory never holds more than the converted model plus one tensor in its stored form -- not every
    shard in bf16 and then a second, converted copy."""
    weights: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                weights[key] = t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point()
                                    else t.dtype)
    return weights


def timm_family(timm_id: str) -> tuple[int, tuple[list[float], list[float]]]:
    for prefix, info in TIMM_FAMILIES.items():
        if timm_id.split(".")[0].startswith(prefix):
            return info
    raise ValueError(f"unsupported timm vision model {timm_id!r}; supported: {sorted(TIMM_FAMILIES)}")


def vit_config_from_weights(w: dict[str, torch.Tensor], prefix: str, timm_id: str, image_size: int,
                            act_override: str | None) -> ViTConfig:
    """Rebuild one encoder's ViTConfig from its tensors' shapes and its timm model id."""
    if f"{prefix}norm_pre.weight" in w:
        raise ValueError(f"{timm_id}: pre-norm ViTs (CLIP's norm_pre) are not supported")
    heads, (mean, std) = timm_family(timm_id)
    proj = w[f"{prefix}patch_embed.proj.weight"]  # (D, 3, p, p)
    width, patch = proj.shape[0], proj.shape[-1]
    depth = 1 + max(int(k[len(prefix):].split(".")[1]) for k in w if k.startswith(f"{prefix}blocks."))
    class_token = f"{prefix}cls_token" in w
    reg = w[f"{prefix}reg_token"].shape[1] if f"{prefix}reg_token" in w else 0
    n_patches = (image_size // patch) ** 2
    n_pos = w[f"{prefix}pos_embed"].shape[1]
    if n_pos not in (n_patches, n_patches + int(class_token) + reg):
        raise ValueError(f"{prefix}pos_embed has {n_pos} positions; expected {n_patches} patches "
                         f"(+ prefix tokens) for image size {image_size}")
    layer_scale = any(f"{prefix}blocks.0.ls1.{n}" in w for n in ("scale_factor", "gamma"))
    act = {None: "gelu", "gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_tanh"}.get(act_override)
    if act is None:
        raise ValueError(f"unsupported activation override {act_override!r}")
    return ViTConfig(image_size=image_size, patch_size=patch, width=width, depth=depth, num_heads=heads,
                     mlp_dim=w[f"{prefix}blocks.0.mlp.fc1.weight"].shape[0], class_token=class_token,
                     reg_tokens=reg, no_embed_class=n_pos == n_patches, layer_scale=layer_scale,
                     act=act, feature_layer=-2, image_mean=mean, image_std=std)


def map_key(key: str) -> str | None:
    """OpenVLA/timm key -> ours, or None for a tensor OpenVLA never uses."""
    for enc in ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer."):
        if key.startswith(enc):
            rest = key[len(enc):]
            if rest.startswith(IGNORED_PREFIXES):
                return None
            return enc + rest.replace(".gamma", ".scale_factor")
    return key


def openvla_config(cfg: dict[str, Any], w: dict[str, torch.Tensor], tokenizer, crop_scale: float,
                   interpolation: str = "bicubic"):
    from vla_accel.policies.openvla.configuration_openvla import OpenVLAConfig

    text = dict(cfg["text_config"])
    if text.get("model_type", "llama") not in SUPPORTED_LLMS:
        raise ValueError(f"unsupported LLM {text.get('model_type')!r}; supported: {SUPPORTED_LLMS}")
    arch = cfg.get("arch_specifier", "no-align+fused-gelu-mlp").split("+")[-1]
    if arch not in ARCH_PROJECTOR_LAYERS:
        raise ValueError(f"unsupported projector {arch!r}; supported: {sorted(ARCH_PROJECTOR_LAYERS)}")
    fused = bool(cfg.get("use_fused_vision_backbone"))
    ids = cfg["timm_model_ids"][: 2 if fused else 1]
    acts = list(cfg.get("timm_override_act_layers") or [None] * len(ids))
    prefixes = ["vision_backbone.featurizer.", "vision_backbone.fused_featurizer."]
    vision = [vit_config_from_weights(w, p, t, s, a)
              for p, t, s, a in zip(prefixes, ids, cfg["image_sizes"], acts)]
    # OpenVLA appends Llama's "▁" (id 29871) after "Out:", as in training.
    suffix = [29871] if tokenizer.convert_ids_to_tokens(29871) == "\u2581" else []
    pad_multiple = int(cfg.get("pad_to_multiple_of", 0))
    return OpenVLAConfig(
        vision=vision, projector_layers=ARCH_PROJECTOR_LAYERS[arch], input_image_size=None,
        crop_scale=crop_scale, n_action_bins=int(cfg.get("n_action_bins", 256)),
        action_dim=len(next(iter(cfg["norm_stats"].values()))["action"]["q01"]) if cfg.get("norm_stats") else 7,
        prompt_suffix_ids=suffix, pad_to_multiple_of=pad_multiple, norm_stats=cfg.get("norm_stats") or {},
        gripper="open_is_1",  # OpenVLA's data: gripper in [0, 1], 1 = open
        resize_interpolation=interpolation,
        text_config=text, action_vocab_end=int(text["vocab_size"]) - pad_multiple,
    )


def load_openvla_hf(path: str | Path, runner=None, device=None, dtype=None, crop_scale: float = 1.0):
    """Build our OpenVLA-style policy from a checkpoint directory in OpenVLA's HF layout."""
    from vla_accel.policies.openvla.modeling_openvla import OpenVLAPolicy

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    if not is_openvla_hf_config(cfg):
        raise ValueError(f"{path} is not an OpenVLA HF checkpoint (model_type {cfg.get('model_type')!r})")
    tokenizer = load_hf_tokenizer(path, cfg)
    files = weight_files(path)
    dtype = dtype or checkpoint_dtype(files)
    weights = read_weights(path, device or "cpu", dtype)
    config = openvla_config(cfg, weights, tokenizer, crop_scale, preprocessor_interpolation(path))
    config.norm_stats = {**config.norm_stats, **read_dataset_statistics(path)}
    state = {}
    for key, tensor in weights.items():
        ours = map_key(key)
        if ours is not None:
            state[ours] = tensor
    with torch.device("meta"):  # no second copy of a 7B model in memory
        model = OpenVLAPolicy(config, tokenizer, runner=runner)
    assign_exact_state(model, state, "OpenVLA")
    del weights, state
    return model.eval()


def load_hf_tokenizer(path: Path, cfg: dict[str, Any]) -> PreTrainedTokenizerFast:
    """The checkpoint's tokenizer, with the pad and BOS tokens the prompt needs (taken from the config's
    ids when the tokenizer files lack them, else a clear error now rather than at the first call)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    text = cfg.get("text_config") or {}
    for role, token_id in (("pad", cfg.get("pad_token_id", text.get("pad_token_id"))),
                           ("bos", text.get("bos_token_id", cfg.get("bos_token_id")))):
        if getattr(tokenizer, f"{role}_token") is not None:
            continue
        token = tokenizer.convert_ids_to_tokens(int(token_id)) if token_id is not None else None
        if token is None or int(token_id) >= len(tokenizer):
            raise ValueError(f"{path}: the tokenizer has no {role} token and config.json names no valid "
                             f"{role}_token_id (got {token_id!r}); OpenVLA pads with <PAD> (id 32000) and "
                             "starts with <s> (id 1)")
        setattr(tokenizer, f"{role}_token", token)  # OpenVLA pads with id 32000 ("<PAD>")
    return tokenizer


def preprocessor_interpolation(path: Path) -> str:
    """The resize kernel of the checkpoint's preprocessor_config.json ("bicubic" when it says none, as
    OpenVLA's PrismaticImageProcessor defaults)."""
    file = path / "preprocessor_config.json"
    names = json.loads(file.read_text()).get("interpolations") if file.is_file() else None
    name = (names or ["bicubic"])[0]
    if name not in ("bilinear", "bicubic"):
        raise ValueError(f"{file}: unsupported interpolation {name!r}; supported: bilinear, bicubic")
    return name


def read_dataset_statistics(path: Path) -> dict[str, Any]:
    """dataset_statistics.json of a fine-tuned OpenVLA checkpoint ({} when absent). OpenVLA's own LIBERO
    eval loads it over the config's norm_stats, so its entries win."""
    file = path / "dataset_statistics.json"
    if not file.is_file():
        return {}
    stats = json.loads(file.read_text())
    bad = [k for k, v in stats.items() if not isinstance(v, dict) or "action" not in v]
    if bad:
        raise ValueError(f"{file}: entries {bad} have no 'action' statistics (q01/q99/mask)")
    return stats
