"""The VLM both policies share: `vision_backbone` -> `projector` -> `language_model` (Llama).

Attribute names follow OpenVLA's checkpoint (`vision_backbone.featurizer.*`, `projector.fc*`,
`language_model.model.layers.N.*`, `language_model.lm_head`), so its state dict keys line up.
Every LLM call goes through `self.runner` (docs/interfaces.md, "The LLM runner seam").
"""

from __future__ import annotations

import copy
import json
from collections import deque
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import LlamaConfig, PreTrainedTokenizerBase

from vla_accel.policies.common.film import TextFiLM, instruction_embedding
from vla_accel.policies.common.llm import build_llama, float32_rotary, llama_config, padded_vocab
from vla_accel.policies.common.observation import ParsedObs, parse_obs
from vla_accel.policies.common.projector import Projector
from vla_accel.policies.common.prompt import PromptBatch, build_prompt_batch, scatter_visual
from vla_accel.policies.common.tokenizer import build_tokenizer
from vla_accel.policies.common.vision import VisionBackbone
from vla_accel.policies.common.vlm_config import VLMConfig
from vla_accel.policies.call_styles import infer
from vla_accel.policies.llm_runner import HFRunner, PrefillResult
from vla_accel.policies.common.processor import ProcessedInputs, VLAProcessor
from vla_accel.measure.timing import StageTimer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def complete_vocab(config: VLMConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Fill `text_config` and `action_vocab_end` for a new model from its tokenizer."""
    if config.text_config is None:
        n = len(tokenizer)
        cfg = llama_config(config.llm, padded_vocab(n, config.pad_to_multiple_of),
                           tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        config.text_config = cfg.to_dict()
    if config.action_vocab_end is None:
        config.action_vocab_end = len(tokenizer)


class VLMBase(nn.Module):
    config_class: type[VLMConfig] = VLMConfig
    model_type: str = "vla_accel_vlm"

    def __init__(self, config: VLMConfig, tokenizer: PreTrainedTokenizerBase, runner=None) -> None:
        super().__init__()
        complete_vocab(config, tokenizer)
        self.config = config
        self.tokenizer = tokenizer
        self.processor = VLAProcessor(tokenizer, config)
        self.vision_backbone = VisionBackbone(config.vision)
        llm_cfg = LlamaConfig(**{k: v for k, v in config.text_config.items()
                                 if k not in ("transformers_version", "architectures", "model_type")})
        self.projector = Projector(self.vision_backbone.embed_dim, llm_cfg.hidden_size,
                                   config.projector_layers, config.standardize_visual)
        self.language_model = build_llama(llm_cfg, config.attn_implementation)
        self.vision_film = TextFiLM(llm_cfg.hidden_size, [v.width for v in config.vision],
                                    [v.last_block + 1 for v in config.vision]) if config.text_film else None
        self.runner = runner if runner is not None else HFRunner()
        self.unnorm_key: str | None = None
        self._queue: deque = deque()  # select_action's actions still to execute (per episode)
        # Per-stage timing of each inference call (vla_accel.measure.timing): vision, prefill, decode, action_head.
        self.timer = StageTimer()
        self.last_prompt_tokens = 0  # T of the last prefill (for the FLOPs count, vla_accel.accel.call_accounting)
        self.last_batch_size = 0

    # --- timing -------------------------------------------------------------------------------
    @property
    def last_timing(self) -> dict[str, float]:
        """{stage: ms} of the last inference call (vision, prefill, decode / action_head, total)."""
        return dict(self.timer.last)

    def timed_call(self):
        """Context of one inference call (CUDA-synchronised stage boundaries when the model is on CUDA)."""
        self.timer.cuda = self.device.type == "cuda"
        return self.timer.call()

    # --- call styles and episodes ------------------------------------------------------------
    def infer(self, obs: dict) -> dict[str, Any]:
        """openpi's call style: one unbatched observation -> {"actions": (H, A), "policy_timing", ...}."""
        return infer(self, obs)

    def fork_episode(self) -> "VLMBase":
        """A view of this policy sharing every parameter and buffer, with its own episode state (reset).

        ``copy.copy`` of an ``nn.Module`` copies its ``__dict__`` shallowly: ``_parameters`` /
        ``_modules`` / ``_buffers`` stay the very same dicts, so every tensor is shared (no memory, and a
        weight update is seen by all views). The runner (the accelerator's temporal state), the select_action
        queue and the stage timer are the view's own; subclasses add theirs in ``_fresh_episode_state``.
        The views must not run concurrently (they share modules, and a DiT feature cache lives in the
        shared DiT): a server serialises inference through one worker thread."""
        view = copy.copy(self)
        view.runner = self.runner.fork()
        view.timer = copy.copy(self.timer)  # its own `last` record and call count
        view.timer.last = {}
        view._fresh_episode_state()
        view.reset()
        return view

    def _fresh_episode_state(self) -> None:
        self._queue = deque(maxlen=self._queue.maxlen)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: VLMConfig, extra_texts: list[str] | None = None, runner=None):
        """A new, randomly initialised model with a tokenizer trained on our corpus + extra_texts."""
        tokenizer = build_tokenizer(config.bpe_vocab_size, cls.n_action_tokens(config), extra_texts)
        return cls(config, tokenizer, runner=runner)

    @staticmethod
    def n_action_tokens(config: VLMConfig) -> int:
        return 256

    # --- device / dtype -----------------------------------------------------------------------
    def _apply(self, fn, recurse: bool = True):
        """Every .to() / .bfloat16() / .cuda() ends here: afterwards the rotary frequencies are rebuilt in
        float32, as transformers' from_pretrained(dtype=bf16) and the official OpenVLA code keep them
        (bf16 frequencies put cos/sin off by up to 0.36 at position ~275 with head_dim 128)."""
        super()._apply(fn, recurse)
        llm = getattr(self, "language_model", None)
        inv_freq = llm.model.rotary_emb.inv_freq if llm is not None else None
        if inv_freq is not None and inv_freq.dtype != torch.float32 and inv_freq.device.type != "meta":
            float32_rotary(llm, inv_freq.device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- inputs -------------------------------------------------------------------------------
    def parse(self, obs: dict) -> ParsedObs:
        return parse_obs(obs, self.config.cameras, self.config.input_image_size)

    def process(self, parsed: ParsedObs) -> ProcessedInputs:
        return self.processor(parsed, self.device)

    def encode_images(self, pixel_values: torch.Tensor, film_cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_cameras, C, S, S) -> visual tokens (B, n_cameras * P, D_llm).
        film_cond: `film_condition(batch)`, needed when config.text_film."""
        b, n_cam = pixel_values.shape[:2]
        self.runner.observe_frame(pixel_values, self.config.num_visual_tokens)  # the runner seam's frame hook
        probe = self.runner.encoder_attention_request()  # None unless a pruning method reads encoder attention
        visual = self.projector(self.vision_features(pixel_values, film_cond, probe))  # (B * n_cam, P, D)
        if probe is not None:  # (B * n_cam, P) per block -> (B, M), in the visual tokens' order
            self.runner.observe_encoder_attention({i: m.reshape(b, -1) for i, m in probe.maps.items()})
        return visual.reshape(b, n_cam * visual.shape[1], visual.shape[2])

    def vision_features(self, pixel_values: torch.Tensor, film_cond: torch.Tensor | None = None,
                        probe=None) -> torch.Tensor:
        """(B, n_cameras, C, S, S) -> the vision backbone's patch features (B * n_cameras, P, Dv).
        probe: a vision.AttentionProbe whose maps this forward fills (the runner's request)."""
        n_cam = pixel_values.shape[1]
        film = None
        if self.vision_film is not None:
            if film_cond is None:
                raise ValueError("this model conditions its vision tower on the instruction (text_film): "
                                 "pass film_cond=model.film_condition(prompt_batch)")
            film = self.vision_film(film_cond.to(self.dtype).repeat_interleave(n_cam, dim=0))
        return self.vision_backbone(pixel_values.flatten(0, 1).to(self.dtype), film, probe)

    def film_condition(self, batch: PromptBatch) -> torch.Tensor | None:
        """The instruction embedding the vision tower is conditioned on (None without text_film)."""
        if self.vision_film is None:
            return None
        tokens = self.language_model.get_input_embeddings()(batch.input_ids)
        return instruction_embedding(tokens, batch.text_mask)

    def prompt_batch(self, inputs: ProcessedInputs, suffix_ids: list[list[int]] | None = None) -> PromptBatch:
        batch = build_prompt_batch(inputs.text_ids, inputs.instr_masks, self.config.num_visual_tokens,
                                   self.tokenizer.bos_token_id, self.tokenizer.pad_token_id, suffix_ids)
        return batch.to(self.device)

    def embed(self, batch: PromptBatch, visual: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the visual slots filled: (B, T, D)."""
        tokens = self.language_model.get_input_embeddings()(batch.input_ids)
        return scatter_visual(tokens, visual, batch.visual_start)

    def prefill(self, inputs: ProcessedInputs, suffix_ids: list[list[int]] | None = None) -> PrefillResult:
        batch = self.prompt_batch(inputs, suffix_ids)
        with self.timer.stage("vision"):
            visual = self.encode_images(inputs.pixel_values, self.film_condition(batch))
        embeds = self.embed(batch, visual)  # (B, T, D)
        self.last_batch_size, self.last_prompt_tokens = embeds.shape[0], embeds.shape[1]
        with self.timer.stage("prefill"):
            return self.runner.prefill(self.language_model, embeds, batch.attention_mask,
                                       batch.visual_start, batch.num_visual, batch.text_mask)

    # --- checkpoints --------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = {"model_type": self.model_type, **self.config.to_dict()}
        (path / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        save_model(self, str(path / WEIGHTS_FILE))
        self.processor.save_pretrained(path)

    @classmethod
    def _load_native(cls, path: Path, cfg: dict[str, Any], runner=None, device=None, dtype=None):
        from vla_accel.policies.common.tokenizer import load_tokenizer

        if cfg.get("model_type") != cls.model_type:
            raise ValueError(
                f"{path} holds a {cfg.get('model_type')!r} checkpoint, not {cls.model_type!r}"
            )
        model = cls(cls.config_class.from_dict(cfg), load_tokenizer(path), runner=runner)
        load_model(model, str(path / WEIGHTS_FILE), strict=True, device="cpu")
        model.eval()
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model


def assign_exact_state(model: VLMBase, state: dict[str, torch.Tensor], what: str) -> None:
    """Put a converted checkpoint's tensors into a meta-built model (no second copy in memory): every key and
    shape must match, else a ValueError naming the first differences; then float32 rotary frequencies."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what} checkpoint does not fit: missing {missing[:8]}, unexpected {unexpected[:8]}")
    wrong = [(k, tuple(t.shape), tuple(expected[k].shape)) for k, t in state.items() if t.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{what} checkpoint shapes differ from the model built for it (key, stored, ours): "
                         f"{wrong[:6]}")
    model.load_state_dict(state, strict=True, assign=True)
    float32_rotary(model.language_model, next(iter(state.values())).device)


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}; not a checkpoint directory")
    return json.loads((path / CONFIG_FILE).read_text())
