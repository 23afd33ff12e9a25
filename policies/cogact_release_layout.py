"""Load a released CogACT checkpoint (CogACT-Small / -Base / -Large) into our CogACT-style policy.

The release (facts: /work/shared/cogact_release.md, read from microsoft/CogACT and its prismatic fork):
  <dir>/config.json              the training config; `vla.base_vlm` names the VLM
  <dir>/dataset_statistics.json  {dataset: {"action": {q01, q99, mask, ...}, ...}}
  <dir>/checkpoints/<name>.pt    torch.save({"model": {"action_model", "vision_backbone",
                                 "llm_backbone", "projector"}}), every tensor float32
The .pt is read with `torch.load(weights_only=True)`: only tensors and plain containers are rebuilt and
no pickled code runs; a file that needs anything else is refused. The Llama-2 tokenizer and config are
not in the release (CogACT fetches them from the gated meta-llama/Llama-2-7b-hf): the caller names a
local copy. Key mapping (ours on the right):
  vision_backbone: dino_featurizer.*   -> vision_backbone.featurizer.*        (timm `ls*.gamma` ->
                   siglip_featurizer.* -> vision_backbone.fused_featurizer.*   `ls*.scale_factor`;
                   SigLIP's attn_pool.* MAP head is dropped: CogACT never runs it)
  projector:       projector.{0,2,4}.*  -> projector.fc{1,2,3}.*
  llm_backbone:    llm.*                -> language_model.*
  action_model:    net.x_embedder.linear -> action_model.x_embedder, net.z_embedder.linear -> z_embedder,
                   net.z_embedder.uncondition -> null_condition, net.positional_embedding -> pos_embed,
                   net.t_embedder.mlp.* and net.blocks.N.{attn,mlp}.* -> same names,
                   net.final_layer.linear -> final_proj; net.history_embedder.* is dropped (never used)
Everything CogACT computes differently from our defaults is a config switch set here (one summed
condition token, LayerNorms without affine parameters, DDIM without clipping, the binarised gripper,
</s> as the cognition token); anything else unexpected is refused with an error that names it.
docs/cogact_checkpoint_layout.md lists what is supported and what is refused.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, PreTrainedTokenizerFast

from vla_accel.policies.common.vlm import assign_exact_state
from vla_accel.policies.openvla_hf_layout import IGNORED_PREFIXES, read_dataset_statistics, vit_config_from_weights

GROUPS = ("action_model", "vision_backbone", "llm_backbone", "projector")
# prismatic's ModelConfig of the base VLM -> (timm ids of the two towers, projector arch). Only the one
# CogACT was trained on is known here; others are refused rather than guessed.
BASE_VLMS = {"prism-dinosiglip-224px+7b": (("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"),
                                           "no-align+fused-gelu-mlp")}
# CogACT's DiT sizes: (hidden, depth) -> (name, heads). Heads cannot be read from the weights.
DIT_SIZES = {(384, 6): ("DiT-S", 4), (768, 12): ("DiT-B", 12), (1024, 24): ("DiT-L", 16)}
TOWERS = (("dino_featurizer.", "vision_backbone.featurizer."),
          ("siglip_featurizer.", "vision_backbone.fused_featurizer."))
PROJECTOR = {"projector.0.": "projector.fc1.", "projector.2.": "projector.fc2.", "projector.4.": "projector.fc3."}
MISSING_LLAMA = ("a released CogACT checkpoint holds no Llama-2 tokenizer or LLM config (CogACT downloads them "
                 "from the gated meta-llama/Llama-2-7b-hf); pass tokenizer_path=<local Llama-2-7b-hf directory "
                 "with tokenizer.json> (policy.tokenizer_path=...) and, if its config.json is elsewhere, llm_config=")


def is_cogact_release(path: str | Path) -> bool:
    """A .pt file under checkpoints/, or a directory whose config.json is CogACT's training config."""
    path = Path(path)
    if path.suffix == ".pt":
        return True
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    data = json.loads(cfg.read_text())
    return "model_type" not in data and isinstance(data.get("vla"), dict)


def release_files(path: Path) -> tuple[Path, Path]:
    """(release directory, its .pt), found the way CogACT's load_vla finds them."""
    if path.suffix == ".pt":
        if path.parent.name != "checkpoints":
            raise ValueError(f"{path}: a CogACT .pt must sit in a folder named checkpoints/ (as load_vla wants), "
                             "with config.json and dataset_statistics.json one level up")
        root, pts = path.parent.parent, [path]
    else:
        root, pts = path, sorted((path / "checkpoints").glob("*.pt"))
    if len(pts) != 1:
        raise ValueError(f"{root}: need exactly one checkpoints/*.pt, found {[p.name for p in pts]}")
    for name in ("config.json", "dataset_statistics.json"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root}: missing {name} of the CogACT release")
    if not pts[0].is_file():
        raise FileNotFoundError(f"{pts[0]} does not exist")
    return root, pts[0]


def read_pt(file: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The four state dicts of the .pt, by torch's weights-only unpickler (no pickled code runs).
    mmap: a 30 GB file is paged in as the tensors are used, not read into memory first."""
    try:
        data = _weights_only_load(file)
    except pickle.UnpicklingError as e:  # what the weights-only unpickler raises for anything else
        raise ValueError(f"{file}: refused -- it needs more than plain tensors and containers to unpickle "
                         f"(torch.load(weights_only=True) said: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or set(data) != {"model"} or not isinstance(data["model"], dict):
        raise ValueError(f"{file}: not a CogACT checkpoint: expected {{'model': {{...}}}}, got keys "
                         f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    groups = data["model"]
    if "ema_diffusion" in groups:
        raise ValueError(f"{file}: holds ema_diffusion (trained with use_ema=True); which DiT weights CogACT "
                         "would run for it is not established, so it is refused (the released models have none)")
    if set(groups) != set(GROUPS):
        raise ValueError(f"{file}: expected the groups {list(GROUPS)}, got {list(groups)}")
    for name, sd in groups.items():
        if not isinstance(sd, dict):
            raise ValueError(f"{file}: group {name} is a {type(sd).__name__}, not a state dict")
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"{file}: {name} holds non-tensor entries {bad[:5]}")
    return {name: dict(groups[name]) for name in GROUPS}


def _weights_only_load(file: Path) -> Any:
    try:
        return torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # a file torch cannot memory-map (an old format): read it whole instead
        if "mmap" not in str(e):
            raise
        return torch.load(str(file), map_location="cpu", weights_only=True)


def map_vision(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in sd.items():
        for theirs, ours in TOWERS:
            if key.startswith(theirs):
                rest = key[len(theirs):]
                if not rest.startswith(IGNORED_PREFIXES):
                    out[ours + rest.replace(".gamma", ".scale_factor")] = t
                break
        else:
            raise ValueError(f"vision_backbone key {key!r} belongs to neither dino_featurizer nor siglip_featurizer "
                             "(only the fused DINOv2 + SigLIP backbone is supported)")
    return out


def map_projector(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in sd.items():
        prefix = next((p for p in PROJECTOR if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"projector key {key!r}: expected the fused GELU MLP's projector.{{0,2,4}} only")
        out[PROJECTOR[prefix] + key[len(prefix):]] = t
    return out


def map_llm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    bad = [k for k in sd if not k.startswith("llm.")]
    if bad:
        raise ValueError(f"llm_backbone keys {bad[:5]} lack the llm. prefix of prismatic's LLaMa2 backbone")
    return {"language_model." + k[len("llm."):]: t for k, t in sd.items()}


def map_action_model(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CogACT's DiT keys -> ours; a key of any other DiT design (adaLN, affine norms...) is named."""
    fixed = {"net.x_embedder.linear.": "action_model.x_embedder.", "net.z_embedder.linear.": "action_model.z_embedder.",
             "net.t_embedder.mlp.": "action_model.t_embedder.mlp.",
             "net.final_layer.linear.": "action_model.final_proj.",
             "net.blocks.": "action_model.blocks."}
    block_parts = ("attn.qkv.", "attn.proj.", "mlp.fc1.", "mlp.fc2.")
    out, unknown = {}, []
    for key, t in sd.items():
        if key.startswith("net.history_embedder."):
            continue  # CogACT builds it but never calls it (no action history)
        if key == "net.positional_embedding":
            out["action_model.pos_embed"] = t.unsqueeze(0)  # (1 + H, W) -> (1, 1 + H, W), a view
            continue
        if key == "net.z_embedder.uncondition":
            out["action_model.null_condition"] = t
            continue
        prefix = next((p for p in fixed if key.startswith(p)), None)
        rest = key[len(prefix):] if prefix else ""
        if prefix == "net.blocks." and not rest.split(".", 1)[-1].startswith(block_parts):
            prefix = None
        if prefix is None:
            unknown.append(key)
        else:
            out[fixed[prefix] + rest] = t
    if unknown:
        raise ValueError(f"action_model keys {unknown[:6]} are not in CogACT's released DiT (which has no adaLN "
                         "modulation and no affine LayerNorms): this DiT design is not supported")
    return out


def dit_fields(w: dict[str, torch.Tensor], cfg: dict[str, Any], llm_hidden: int, dit_heads: int | None) -> dict:
    """The CogACTConfig fields of the DiT, read from the shapes and checked against config.json."""
    need = [f"action_model.{k}" for k in ("x_embedder.weight", "z_embedder.weight", "pos_embed", "null_condition",
                                          "final_proj.weight", "blocks.0.mlp.fc1.weight")]
    missing = [k for k in need if k not in w]
    if missing:
        raise ValueError(f"the action_model lacks {missing} (CogACT names: net.x_embedder.linear, "
                         "net.z_embedder.{linear,uncondition}, net.positional_embedding, net.final_layer.linear, "
                         "net.blocks.N.mlp.fc1)")
    width, action_dim = w["action_model.x_embedder.weight"].shape
    depth = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("action_model.blocks."))
    rows = w["action_model.pos_embed"].shape[1]
    future, past = int(cfg.get("future_action_window_size", 15)), int(cfg.get("past_action_window_size", 0))
    if past != 0:
        raise ValueError(f"past_action_window_size {past}: CogACT models with action history are not supported")
    if rows != future + 2:
        raise ValueError(f"net.positional_embedding has {rows} rows; config.json's future_action_window_size "
                         f"{future} needs {future + 2} (the condition token + {future + 1} actions)")
    if action_dim != int(cfg.get("action_dim", action_dim)) or action_dim != 7:
        raise ValueError(f"action dim {action_dim} (config.json: {cfg.get('action_dim')}): CogACT's gripper "
                         "binarisation is defined for its 7-D actions only")
    out_dim = w["action_model.final_proj.weight"].shape[0]
    if out_dim != action_dim:
        raise ValueError(f"final_layer outputs {out_dim} channels for {action_dim}-D actions "
                         "(learn_sigma is not supported)")
    if w["action_model.z_embedder.weight"].shape[1] != llm_hidden:
        raise ValueError(f"z_embedder takes {w['action_model.z_embedder.weight'].shape[1]} inputs, "
                         f"the LLM gives {llm_hidden}")
    mlp = w["action_model.blocks.0.mlp.fc1.weight"].shape[0]
    return {"chunk_size": future + 1, "action_dim": action_dim, "dit_width": width, "dit_depth": depth,
            "dit_heads": dit_num_heads(width, depth, cfg.get("action_model_type"), dit_heads),
            "dit_mlp_ratio": mlp / width}


def dit_num_heads(width: int, depth: int, named: str | None, dit_heads: int | None) -> int:
    known = DIT_SIZES.get((width, depth))
    if known is not None:
        name, heads = known
        if named is not None and named != name:
            raise ValueError(f"config.json says action_model_type {named!r} but the weights are {name} "
                             f"(hidden {width}, {depth} blocks)")
        if dit_heads is not None and dit_heads != heads:
            raise ValueError(f"dit_heads={dit_heads}, but {name} has {heads} heads")
        return heads
    if dit_heads is None:
        raise ValueError(f"the DiT (hidden {width}, {depth} blocks) is none of CogACT's "
                         f"{sorted(n for n, _ in DIT_SIZES.values())}; its head count is not in the weights: "
                         "pass dit_heads=")
    return int(dit_heads)


def load_release_tokenizer(tokenizer_path: str | Path | None) -> PreTrainedTokenizerFast:
    """Llama-2's fast tokenizer from tokenizer.json, with prismatic's <PAD> added (id 32000 for Llama-2)."""
    if tokenizer_path is None:
        raise ValueError(MISSING_LLAMA)
    path = Path(tokenizer_path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer_path {path} holds no tokenizer.json (the fast Llama-2 tokenizer, "
                                "as CogACT requires a LlamaTokenizerFast)")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    if tokenizer.bos_token is None or tokenizer.eos_token is None:
        raise ValueError(f"{path}: the tokenizer names no bos/eos token (Llama-2's are <s> and </s>; "
                         "tokenizer_config.json or special_tokens_map.json must say so)")
    if tokenizer.convert_tokens_to_ids("\u2581") in (None, tokenizer.unk_token_id):
        raise ValueError(f"{path}: no '\u2581' piece in the vocabulary: not a Llama (sentencepiece) tokenizer; "
                         "CogACT's prompt ends with that piece (id 29871) and </s>")
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})  # as prismatic's LLaMa2 backbone does
    tokenizer.padding_side = "left"  # our prompt builder left-pads; positions stay those of an unpadded row
    return tokenizer


def read_llm_config(llm_config, tokenizer_path) -> dict[str, Any]:
    """llm_config: a dict, a config.json, or a directory holding one (default: tokenizer_path's)."""
    if isinstance(llm_config, Mapping):  # a dict, or a Hydra node given inline
        return {str(k): v for k, v in llm_config.items()}
    source = llm_config if llm_config is not None else tokenizer_path
    if source is None:
        raise ValueError(MISSING_LLAMA)
    file = Path(source) / "config.json" if Path(source).is_dir() else Path(source)
    if not file.is_file():
        raise FileNotFoundError(f"no LLM config at {file}: pass llm_config=<Llama-2-7b-hf's config.json or its "
                                "directory> (the release does not include it)")
    return json.loads(file.read_text())


def text_config(raw: dict[str, Any], w: dict[str, torch.Tensor], tokenizer) -> dict[str, Any]:
    """The LlamaConfig after prismatic's edits (vocabulary padded to the weights' rows, <PAD> id), checked
    against the weights: a config of another model is an error naming the field."""
    if raw.get("model_type", "llama") != "llama":
        raise ValueError(f"the LLM config is a {raw.get('model_type')!r} one; CogACT's LLM is Llama-2")
    drop = ("transformers_version", "architectures", "model_type", "torch_dtype", "dtype", "_name_or_path")
    cfg = LlamaConfig(**{k: v for k, v in raw.items() if k not in drop})
    rows, hidden = w["language_model.model.embed_tokens.weight"].shape
    layers = 1 + max(int(k.split(".")[3]) for k in w if k.startswith("language_model.model.layers."))
    head_dim = hidden // cfg.num_attention_heads
    kv_rows = w["language_model.model.layers.0.self_attn.k_proj.weight"].shape[0]
    found = {"hidden_size": hidden, "num_hidden_layers": layers,
             "intermediate_size": w["language_model.model.layers.0.mlp.gate_proj.weight"].shape[0],
             "num_key_value_heads": kv_rows // head_dim}
    wrong = {k: (getattr(cfg, k), v) for k, v in found.items() if getattr(cfg, k) != v}
    if wrong:
        raise ValueError(f"the LLM config does not fit the checkpoint (config, weights): {wrong}")
    if len(tokenizer) > rows:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the embedding only {rows} rows")
    if "language_model.lm_head.weight" not in w:
        raise ValueError("llm_backbone has no llm.lm_head.weight (tied embeddings are not CogACT's Llama-2)")
    cfg.vocab_size, cfg.pad_token_id, cfg.tie_word_embeddings = rows, tokenizer.pad_token_id, False
    cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    return cfg.to_dict()


def release_config(cfg: dict[str, Any], w: dict[str, torch.Tensor], tokenizer, text: dict[str, Any],
                   stats: dict[str, Any], dit_heads: int | None):
    """Our CogACTConfig reproducing CogACT's inference path (cogact_release.md, section 2)."""
    from vla_accel.policies.cogact.configuration_cogact import CogACTConfig

    base = (cfg.get("vla") or {}).get("base_vlm")
    if base not in BASE_VLMS:
        raise ValueError(f"config.json vla.base_vlm {base!r} is not supported; supported: {sorted(BASE_VLMS)}")
    (dino_id, siglip_id), _ = BASE_VLMS[base]
    vision = [vit_config_from_weights(w, prefix, timm_id, tower_image_size(w, prefix), None)
              for (_, prefix), timm_id in zip(TOWERS, (dino_id, siglip_id))]
    return CogACTConfig(
        vision=vision, projector_layers=3, input_image_size=None, crop_scale=1.0,
        resize_interpolation="bicubic",  # resize-naive: Resize((224, 224), bicubic) of the timm transform
        prompt_suffix_ids=[tokenizer.convert_tokens_to_ids("\u2581")],  # "Out:" + 29871 + the </s> below
        cognition_token_id=tokenizer.eos_token_id, pad_to_multiple_of=64, norm_stats=stats,
        text_config=text, action_vocab_end=len(tokenizer),
        **dit_fields(w, cfg, text["hidden_size"], dit_heads),
        standardize_condition=False, diffusion_steps=100, noise_schedule="squaredcos_cap_v2", ddim_steps=10,
        cfg_scale=1.5, repeated_diffusion_steps=int(cfg.get("repeated_diffusion_steps", 8)),
        dit_condition_tokens=1, dit_norm_affine=False, ddim_clip_sample=False, binarize_gripper=True,
        use_ensemble=True, ensemble_alpha=0.1, ensemble_horizon=7,  # SimplerEnv WidowX; 2 for the Google robot
    )


def tower_image_size(w: dict[str, torch.Tensor], prefix: str) -> int:
    """The tower's resolution from its patch-only position table (224 in the release: 16 x 16 x 14 px)."""
    rows = w[f"{prefix}pos_embed"].shape[1]
    grid = int(round(rows ** 0.5))
    if grid * grid != rows:
        raise ValueError(f"{prefix}pos_embed has {rows} rows: not a square patch grid (a table covering prefix "
                         "tokens is not the DINOv2-reg / SigLIP layout CogACT uses)")
    return grid * w[f"{prefix}patch_embed.proj.weight"].shape[-1]


def release_state(groups: dict[str, dict[str, torch.Tensor]], device, dtype) -> dict[str, torch.Tensor]:
    """Our state dict from the four groups, each tensor moved / cast as it is taken."""
    state = {**map_vision(groups["vision_backbone"]), **map_projector(groups["projector"]),
             **map_llm(groups["llm_backbone"]), **map_action_model(groups["action_model"])}
    return {k: t.to(device=device or "cpu", dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
            for k, t in state.items()}


def load_cogact_release(path: str | Path, runner=None, device=None, dtype=None, tokenizer_path=None,
                        llm_config=None, dit_heads: int | None = None):
    """Build our CogACT-style policy from a released CogACT checkpoint (a directory or its .pt)."""
    from vla_accel.policies.cogact.ddim import DDIM
    from vla_accel.policies.cogact.modeling_cogact import CogACTPolicy

    root, pt = release_files(Path(path))
    cfg = json.loads((root / "config.json").read_text())
    tokenizer = load_release_tokenizer(tokenizer_path)
    raw_llm = read_llm_config(llm_config, tokenizer_path)
    state = release_state(read_pt(pt), device, dtype)
    text = text_config(raw_llm, state, tokenizer)
    config = release_config(cfg, state, tokenizer, text, read_dataset_statistics(root), dit_heads)
    with torch.device("meta"):  # no second copy of a 7B model in memory
        model = CogACTPolicy(config, tokenizer, runner=runner)
    assign_exact_state(model, state, "CogACT")
    del state
    # Tensors made in __init__ under the meta device: the DDIM tables and the noise generator.
    model.diffusion = DDIM(config.diffusion_steps, config.noise_schedule, config.ddim_clip_sample)
    model._generator = torch.Generator()
    model._seed_noise()
    return model.eval()  # CogACT's DiT otherwise drops conditions at random even at inference



def convert_release(release: str | Path, out_dir: str | Path, tokenizer_path=None, llm_config=None,
                    dit_heads: int | None = None, dtype=None) -> Path:
    """One-time conversion to our safetensors layout (config.json, model.safetensors, tokenizer files):
    the result loads with CogACTPolicy.from_pretrained(out_dir), without any pickle."""
    model = load_cogact_release(release, tokenizer_path=tokenizer_path, llm_config=llm_config,
                                dit_heads=dit_heads, dtype=dtype)
    out = Path(out_dir)
    model.save_pretrained(out)
    return out
