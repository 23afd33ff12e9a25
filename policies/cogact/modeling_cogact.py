"""The CogACT-style policy: prefill `[BOS][visual][prompt][<cog>]`, take the cognition token's
final-layer hidden state (the runner's `PrefillResult.hidden`), and denoise a chunk of H actions with
the DiT head by DDIM (optionally classifier-free guided); un-normalise with q01/q99 (`unnorm_key`)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vla_accel.policies.cogact.configuration_cogact import MODEL_TYPE, CogACTConfig
from vla_accel.policies.cogact.ddim import DDIM
from vla_accel.policies.cogact.dit import DiT
from vla_accel.policies.cogact.ensemble import AdaptiveEnsembler
from vla_accel.policies.common.action_tokenizer import action_stats, unnormalize_actions
from vla_accel.policies.common.observation import as_uint8_image, check_instructions
from vla_accel.policies.common.tokenizer import COG
from vla_accel.policies.common.vlm import VLMBase, read_config
from vla_accel.policies.common.processor import ProcessedInputs
from vla_accel.policies.token_drop import forward_with_dropped_tokens


class CogACTPolicy(VLMBase):
    config_class = CogACTConfig
    model_type = MODEL_TYPE

    def __init__(self, config: CogACTConfig, tokenizer, runner=None) -> None:
        super().__init__(config, tokenizer, runner)
        self.cognition_id = (config.cognition_token_id if config.cognition_token_id is not None
                             else tokenizer.convert_tokens_to_ids(COG))
        hidden = self.language_model.config.hidden_size
        self.action_model = DiT(config.action_dim, config.chunk_size, hidden, config.dit_width,
                                config.dit_depth, config.dit_heads, config.dit_mlp_ratio,
                                config.standardize_condition, config.dit_condition_tokens,
                                config.dit_norm_affine)
        self.diffusion = DDIM(config.diffusion_steps, config.noise_schedule, config.ddim_clip_sample)
        self.ensembler = AdaptiveEnsembler(config.ensemble_horizon, config.ensemble_alpha)
        self._generator = torch.Generator()
        self._seed_noise()

    @staticmethod
    def n_action_tokens(config: CogACTConfig) -> int:
        return 0  # actions come from the DiT, not from tokens

    def _seed_noise(self) -> None:
        if self.config.sampling_seed is not None:
            self._generator.manual_seed(self.config.sampling_seed)

    def _fresh_episode_state(self) -> None:
        super()._fresh_episode_state()
        self.ensembler = copy.deepcopy(self.ensembler)  # a small deque of past chunks
        generator = torch.Generator(device=self._generator.device)  # same seed schedule, own stream
        generator.set_state(self._generator.get_state())
        self._generator = generator

    # --- LeRobot-style API --------------------------------------------------------------------
    def reset(self) -> None:
        self._queue.clear()
        self.ensembler.reset()
        self._seed_noise()
        self.runner.reset()

    @torch.no_grad()
    def select_action(self, obs: dict) -> np.ndarray:
        if self.config.use_ensemble:  # predict every step, blend with the earlier chunks
            return self.ensembler.update(self.predict_action_chunk(obs)[0])
        if not self._queue:
            self._queue.extend(self.predict_action_chunk(obs)[0, : self.config.n_action_steps])
        return self._queue.popleft()

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict, noise: torch.Tensor | None = None,
                             unnorm_key: str | None = None) -> np.ndarray:
        """obs (unbatched or batched) -> (B, chunk_size, action_dim) float32 un-normalised actions.
        noise: optional (B, H, A) initial noise (else drawn from the policy's seeded generator)."""
        key = unnorm_key if unnorm_key is not None else self.unnorm_key
        stats = action_stats(self.config.norm_stats, key)
        with self.timed_call():  # one inference call (vla_accel.measure.timing)
            cognition = self.cognition_feature(self.process(self.parse(obs)))  # (B, D)
            with self.timer.stage("action_head"):
                normalized = self.sample_actions(cognition, noise).float().cpu()
            # the executed part of the chunk (select_action's), in [-1, 1]: the motion adaptive budgets gate on
            executed = 1 if self.config.use_ensemble else self.config.n_action_steps
            self.runner.observe_actions(normalized[:, :executed])
            self.runner.end_step()
        if self.config.binarize_gripper:  # CogACT's predict_action: gripper 0 below 0.5, else 1
            normalized[..., -1] = (normalized[..., -1] >= 0.5).float()
        return unnormalize_actions(normalized.numpy(), stats)

    @torch.no_grad()
    def predict_action(self, image, instruction: str, unnorm_key: str | None = None,
                       wrist_image=None) -> np.ndarray:
        """OpenVLA-style call -> the chunk (chunk_size, action_dim) for one image + instruction."""
        obs = {"agentview_image": as_uint8_image(image, "image"),
               "instruction": check_instructions([instruction], 1)[0]}
        if wrist_image is not None:
            obs["wrist_image"] = as_uint8_image(wrist_image, "wrist_image")
        return self.predict_action_chunk(obs, unnorm_key=unnorm_key)[0]

    # --- the two halves -----------------------------------------------------------------------
    def cognition_suffix(self, batch: int) -> list[list[int]]:
        return [[self.cognition_id]] * batch

    def cognition_feature(self, inputs: ProcessedInputs) -> torch.Tensor:
        """Final-normed hidden state at the cognition token, through the runner: (B, D)."""
        return self.prefill(inputs, self.cognition_suffix(len(inputs.text_ids))).hidden

    def sample_actions(self, cognition: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM over `ddim_steps` from noise to normalised actions (B, H, A) in [-1, 1]."""
        b, cfg = cognition.shape[0], self.config
        shape = (b, cfg.chunk_size, cfg.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=self._generator)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        # The DDIM arithmetic stays in float32 (1 - alpha_bar near t = 0 underflows in bfloat16);
        # only the DiT runs in the model's dtype.
        model_dtype = self.action_model.x_embedder.weight.dtype
        x = noise.to(device=cognition.device, dtype=torch.float32)
        cond = self.action_model.standardize(cognition).to(model_dtype)
        guided = cfg.cfg_scale > 1.0
        if guided:  # one batched pass: [conditional; null condition]
            cond = torch.cat([cond, self.action_model.null_condition.expand(b, -1).to(model_dtype)], dim=0)
        steps = self.diffusion.timesteps(cfg.ddim_steps)
        self.action_model.start_loop()
        for i, t in enumerate(steps):
            t_prev = steps[i + 1] if i + 1 < len(steps) else -1
            x_in = (torch.cat([x, x], dim=0) if guided else x).to(model_dtype)
            t_in = torch.full((x_in.shape[0],), t, device=x.device, dtype=torch.long)
            eps = self.action_model(x_in, t_in, cond).float()
            if guided:
                eps_cond, eps_null = eps.chunk(2, dim=0)
                eps = eps_null + cfg.cfg_scale * (eps_cond - eps_null)
            x = self.diffusion.step(eps, t, t_prev, x)
        return x.clamp(-1.0, 1.0)

    # --- training -----------------------------------------------------------------------------
    def diffusion_loss(self, inputs: ProcessedInputs, actions: torch.Tensor, freeze_vlm: bool = False,
                       generator: torch.Generator | None = None,
                       token_drop: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
        """Epsilon-prediction MSE. actions (B, H, A) normalised to [-1, 1]. token_drop: (kept visual
        indices (B, M~), layer K) for a pruning-robust step (policies/token_drop.py)."""
        if freeze_vlm:
            with torch.no_grad():
                cognition = self.training_cognition(inputs, token_drop)
        else:
            cognition = self.training_cognition(inputs, token_drop)
        r = self.config.repeated_diffusion_steps
        x0 = actions.to(cognition.device, torch.float32).repeat(r, 1, 1)  # (r * B, H, A)
        cond = self.action_model.standardize(cognition).repeat(r, 1)  # batch statistics before the repeat
        n = x0.shape[0]
        t = torch.randint(0, self.config.diffusion_steps, (n,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        drop = torch.rand(n, generator=generator).to(x0.device) < self.config.cond_drop_prob
        cond = torch.where(drop[:, None], self.action_model.null_condition.to(cond.dtype), cond)
        x_t = self.diffusion.add_noise(x0, noise, t).to(cond.dtype)  # noised in float32
        eps = self.action_model(x_t, t, cond)
        return F.mse_loss(eps.float(), noise)

    def training_cognition(self, inputs: ProcessedInputs,
                           token_drop: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
        """The cognition feature by a plain (uncached, differentiable) forward: (B, D). token_drop: (kept
        visual indices (B, M~), layer K): layers >= K run on the non-visual tokens and the kept ones."""
        batch = self.prompt_batch(inputs, self.cognition_suffix(len(inputs.text_ids)))
        embeds = self.embed(batch, self.encode_images(inputs.pixel_values, self.film_condition(batch)))
        if token_drop is not None:
            kept, layer = token_drop
            hidden = forward_with_dropped_tokens(self.language_model.model, embeds, batch.attention_mask,
                                                 batch.position_ids, batch.visual_start, batch.num_visual,
                                                 kept.to(embeds.device), layer)
            return hidden[:, -1]
        out = self.language_model.model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                        position_ids=batch.position_ids)
        return out.last_hidden_state[:, -1]

    # --- checkpoints --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, runner=None, device=None, dtype=None,
                        tokenizer_path: str | Path | None = None, llm_config=None,
                        dit_heads: int | None = None) -> "CogACTPolicy":
        """Our own checkpoints, or a released CogACT directory (config.json, dataset_statistics.json,
        checkpoints/CogACT-*.pt; or the .pt itself). The release lacks the Llama-2 tokenizer and config:
        tokenizer_path (and llm_config, default: the same directory) name a local copy of
        Llama-2-7b-hf; dit_heads is needed only for a DiT of none of the released sizes
        (docs/cogact_checkpoint_layout.md)."""
        from vla_accel.policies.cogact_release_layout import is_cogact_release, load_cogact_release

        path = Path(path)
        if is_cogact_release(path):
            return load_cogact_release(path, runner=runner, device=device, dtype=dtype,
                                       tokenizer_path=tokenizer_path, llm_config=llm_config, dit_heads=dit_heads)
        given = [n for n, v in (("tokenizer_path", tokenizer_path), ("llm_config", llm_config),
                                ("dit_heads", dit_heads)) if v is not None]
        if given:
            raise ValueError(f"{path}: {given} are for released CogACT checkpoints; ours carry their tokenizer "
                             "and configuration")
        return cls._load_native(path, read_config(path), runner=runner, device=device, dtype=dtype)
