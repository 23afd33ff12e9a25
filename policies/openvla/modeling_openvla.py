"""The OpenVLA-style policy: prefill the prompt, then greedily decode `action_dim` action tokens
(argmax restricted to the last `n_action_bins` vocabulary ids) with the KV cache, decode the bins to
[-1, 1] and un-normalise with the dataset's q01/q99 (`unnorm_key`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vla_accel.policies.common.action_tokenizer import (
    ActionTokenizer,
    action_stats,
    unnormalize_actions,
)
from vla_accel.policies.common.observation import ParsedObs, as_uint8_image, check_instructions
from vla_accel.policies.common.vlm import VLMBase, read_config
from vla_accel.policies.openvla.configuration_openvla import MODEL_TYPE, OpenVLAConfig, env_gripper
from vla_accel.policies.common.processor import ProcessedInputs


class OpenVLAPolicy(VLMBase):
    config_class = OpenVLAConfig
    model_type = MODEL_TYPE

    def __init__(self, config: OpenVLAConfig, tokenizer, runner=None) -> None:
        super().__init__(config, tokenizer, runner)
        self.action_tokenizer = ActionTokenizer(config.action_vocab_end, config.n_action_bins)

    @staticmethod
    def n_action_tokens(config: OpenVLAConfig) -> int:
        return config.n_action_bins

    # --- LeRobot-style API --------------------------------------------------------------------
    def reset(self) -> None:
        self._queue.clear()
        self.runner.reset()

    @torch.no_grad()
    def select_action(self, obs: dict) -> np.ndarray:
        if not self._queue:
            self._queue.extend(self.predict_action_chunk(obs)[0])
        return self._queue.popleft()

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """obs (unbatched or batched) -> (B, 1, action_dim) float32 un-normalised actions, the gripper in
        the envs' convention (-1 open, +1 close; configuration_openvla.env_gripper)."""
        return env_gripper(self._predict(self.parse(obs)), self.config.gripper)[:, None]

    @torch.no_grad()
    def predict_action(self, image, instruction: str, unnorm_key: str | None = None,
                       wrist_image=None) -> np.ndarray:
        """OpenVLA's call: one (H, W, 3) uint8 image (numpy or PIL) + instruction -> (action_dim,), raw as
        OpenVLA's own ``predict_action`` returns it (a released checkpoint's gripper in [0, 1], 1 = open)."""
        images = {"agentview": as_uint8_image(image, "image")[None]}
        if "wrist" in self.config.cameras:
            if wrist_image is None:
                raise ValueError("this model also uses the wrist camera: pass wrist_image")
            images["wrist"] = as_uint8_image(wrist_image, "wrist_image")[None]
        obs = {"agentview_image": images["agentview"], "instruction": check_instructions([instruction], 1)}
        if "wrist" in images:
            obs["wrist_image"] = images["wrist"]
        return self._predict(self.parse(obs), unnorm_key)[0]

    # --- inference ----------------------------------------------------------------------------
    def _predict(self, parsed: ParsedObs, unnorm_key: str | None = None) -> np.ndarray:
        key = unnorm_key if unnorm_key is not None else self.unnorm_key
        stats = action_stats(self.config.norm_stats, key)  # fail early on a bad key
        with self.timed_call():  # one inference call (vla_accel.measure.timing)
            tokens = self.generate_action_tokens(self.process(parsed))  # (B, A)
            normalized = self.action_tokenizer.decode(tokens.cpu().numpy())
            self.runner.observe_actions(normalized)  # (B, A) in [-1, 1]: the motion adaptive budgets gate on
            self.runner.end_step()
        return unnormalize_actions(normalized, stats)

    def generate_action_tokens(self, inputs: ProcessedInputs) -> torch.Tensor:
        """Greedy decode of the action tokens with the KV cache: (B, action_dim) long."""
        lo, hi = self.action_tokenizer.first_id, self.action_tokenizer.vocab_end
        result = self.prefill(inputs)
        logits, position = result.logits, result.next_position  # (B, V), (B,)
        embed = self.language_model.get_input_embeddings()
        tokens = []
        with self.timer.stage("decode"):
            for k in range(self.config.action_dim):
                token = logits[:, lo:hi].argmax(dim=-1) + lo  # (B,) restricted to the action ids
                tokens.append(token)
                if k + 1 < self.config.action_dim:
                    logits, _ = self.runner.decode_one_token(
                        self.language_model, embed(token)[:, None], result.cache, position[:, None])
                    position = position + 1
            return torch.stack(tokens, dim=1)

    # --- training -----------------------------------------------------------------------------
    def action_token_loss(self, inputs: ProcessedInputs, action_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced cross-entropy on the action tokens. action_tokens (B, A) long.
        Returns (loss, token accuracy). With left padding the A action tokens are the last A
        positions of every row, predicted from positions T-A-1 .. T-2."""
        a = action_tokens.shape[1]
        batch = self.prompt_batch(inputs, action_tokens.tolist())
        embeds = self.embed(batch, self.encode_images(inputs.pixel_values, self.film_condition(batch)))
        hidden = self.language_model.model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                           position_ids=batch.position_ids).last_hidden_state
        logits = self.language_model.lm_head(hidden[:, -a - 1 : -1]).float()  # (B, A, V)
        target = action_tokens.to(logits.device)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        accuracy = (logits.argmax(-1) == target).float().mean()
        return loss, accuracy

    # --- checkpoints --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, runner=None, device=None, dtype=None,
                        center_crop: bool | None = None) -> "OpenVLAPolicy":
        """Our own checkpoints, or the published OpenVLA Hugging Face layout (model_type "openvla").
        center_crop: OpenVLA layout only (its config does not record it): True for a checkpoint fine-tuned
        with random-crop augmentation, as OpenVLA's LIBERO ones (its eval then crops 0.9 of the area)."""
        path = Path(path)
        cfg = read_config(path)
        if cfg.get("model_type") == "openvla":
            from vla_accel.policies.openvla_hf_layout import load_openvla_hf

            return load_openvla_hf(path, runner=runner, device=device, dtype=dtype,
                                   crop_scale=0.9 if center_crop else 1.0)
        if center_crop is not None:
            raise ValueError(f"{path}: center_crop is for OpenVLA-layout checkpoints; ours store their crop_scale")
        return cls._load_native(path, cfg, runner=runner, device=device, dtype=dtype)
