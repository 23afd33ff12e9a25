"""Configuration of the CogACT-style policy: the VLM plus the DiT diffusion action head."""

from __future__ import annotations

from dataclasses import dataclass

from vla_accel.policies.cogact.ddim import SCHEDULES
from vla_accel.policies.common.vlm_config import VLMConfig

MODEL_TYPE = "vla_accel_cogact"


@dataclass
class CogACTConfig(VLMConfig):
    chunk_size: int = 16  # actions per predicted chunk (H)
    n_action_steps: int = 8  # how many of a chunk select_action executes (without ensembling)
    dit_width: int = 256
    dit_depth: int = 4
    dit_heads: int = 4
    dit_mlp_ratio: float = 4.0
    # Standardise the cognition feature (batch statistics) before the DiT; see dit.py for why.
    standardize_condition: bool = False
    diffusion_steps: int = 100  # training timesteps
    noise_schedule: str = "squaredcos_cap_v2"
    ddim_steps: int = 10
    cfg_scale: float = 1.5  # classifier-free guidance; 1.0 turns it off (one DiT pass per step)
    cond_drop_prob: float = 0.1  # training: replace the condition by the learned null one
    repeated_diffusion_steps: int = 4  # training: noise draws per sample (CogACT repeats 4x)
    use_ensemble: bool = False  # CogACT's adaptive action ensemble (predicts every step)
    ensemble_alpha: float = 0.1
    # How many past chunks vote on the current step (CogACT's `action_ensemble_horizon`: its SimplerEnv
    # evaluation uses 7 for WidowX and 2 for the Google robot).
    ensemble_horizon: int = 7
    sampling_seed: int | None = 0  # re-seeds the initial noise at reset(); None = torch's global RNG
    # The released CogACT's choices (policies/cogact_release_layout.py sets them; the defaults are ours).
    # DiT layout: 2 = [t][z] condition tokens and affine LayerNorms; 1 = CogACT's single t + z token.
    dit_condition_tokens: int = 2
    dit_norm_affine: bool = True  # False: CogACT's DiT LayerNorms have no weight or bias
    ddim_clip_sample: bool = True  # False: CogACT samples without clamping x0 (clip_denoised=False)
    # CogACT's predict_action sets the last (gripper) dim of the normalised chunk to 0 below 0.5, else 1.
    binarize_gripper: bool = False
    # The token whose hidden state is the cognition feature: None = our tokenizer's <cog>; CogACT's
    # release uses Llama's </s> (id 2), which its prompt ends with.
    cognition_token_id: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"n_action_steps must be in [1, chunk_size={self.chunk_size}], got {self.n_action_steps}"
            )
        if not 1 <= self.ensemble_horizon <= self.chunk_size:
            raise ValueError(
                f"ensemble_horizon must be in [1, chunk_size={self.chunk_size}], got {self.ensemble_horizon}"
            )
        if self.noise_schedule not in SCHEDULES:
            raise ValueError(f"unknown noise_schedule {self.noise_schedule!r}; valid: {SCHEDULES}")
        if not 1 <= self.ddim_steps <= self.diffusion_steps:
            raise ValueError(f"ddim_steps must be in [1, {self.diffusion_steps}], got {self.ddim_steps}")
        if self.cfg_scale < 1.0:
            raise ValueError(f"cfg_scale must be >= 1 (1 = no guidance), got {self.cfg_scale}")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if self.repeated_diffusion_steps < 1:
            raise ValueError("repeated_diffusion_steps must be >= 1")
        if self.dit_condition_tokens not in (1, 2):
            raise ValueError(f"dit_condition_tokens must be 1 (CogACT's t + z) or 2, got {self.dit_condition_tokens}")
