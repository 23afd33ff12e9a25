"""The configuration shared by the OpenVLA-style and CogACT-style VLMs (validated dataclass)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vla_accel.policies.common.llm import ATTN_IMPLEMENTATIONS, LlamaSizes
from vla_accel.policies.common.vision import ViTConfig
from vla_accel.policies.common.observation import CAMERA_KEYS

OPENVLA_PROMPT = "In: What action should the robot take to {instruction}?\nOut:"


@dataclass
class VLMConfig:
    # One ViT, or two fused channel-wise (Prismatic's DINOv2 + SigLIP).
    vision: list[ViTConfig] = field(default_factory=lambda: [ViTConfig()])
    llm: LlamaSizes = field(default_factory=LlamaSizes)
    projector_layers: int = 3
    standardize_visual: bool = False  # batch-standardise the visual tokens (from-scratch VLMs; standardizer.py)
    # Condition the ViT blocks on the instruction (FiLM, as RT-1/BAKU; film.py). Not in OpenVLA/CogACT:
    # an option for small VLMs trained from scratch, whose Llama alone did not ground the instruction.
    text_film: bool = False
    cameras: list[str] = field(default_factory=lambda: ["agentview"])  # + "wrist": more visual tokens
    # Size of the images the policy accepts (the demos' size); None = any size (resized, as OpenVLA).
    input_image_size: int | None = 128
    crop_scale: float = 1.0  # inference centre crop (0.9 when trained with random-crop augmentation)
    resize_interpolation: str = "bilinear"  # images not at the encoders' size: bilinear | bicubic (OpenVLA's)
    action_dim: int = 7
    attn_implementation: str = "sdpa"
    prompt_template: str = OPENVLA_PROMPT
    lowercase_instruction: bool = True
    prompt_suffix_ids: list[int] = field(default_factory=list)  # OpenVLA/Llama appends 29871
    pad_to_multiple_of: int = 64
    bpe_vocab_size: int = 1024
    # {dataset: {"action": {"q01", "q99", "mask", ...}}}; OpenVLA's norm_stats format.
    norm_stats: dict[str, Any] = field(default_factory=dict)
    # Filled in when the model is built: the LLM's LlamaConfig as a dict, and where the action ids end.
    text_config: dict[str, Any] | None = None
    action_vocab_end: int | None = None

    def __post_init__(self) -> None:
        self.vision = [v if isinstance(v, ViTConfig) else ViTConfig(**v) for v in self.vision]
        if not isinstance(self.llm, LlamaSizes):
            self.llm = LlamaSizes(**self.llm)
        if len(self.vision) not in (1, 2):
            raise ValueError(f"vision needs 1 or 2 encoders, got {len(self.vision)}")
        if len({v.image_size for v in self.vision}) != 1:
            raise ValueError("fused encoders must share one image_size")
        for cam in self.cameras:
            if cam not in CAMERA_KEYS:
                raise ValueError(f"unknown camera {cam!r}; valid: {sorted(CAMERA_KEYS)}")
        if not self.cameras or self.cameras[0] != "agentview":
            raise ValueError(f"cameras must start with 'agentview', got {self.cameras}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attn_implementation {self.attn_implementation!r}; valid: {ATTN_IMPLEMENTATIONS}"
            )
        if "{instruction}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{instruction}'")
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")

    @property
    def image_size(self) -> int:
        return self.vision[0].image_size

    @property
    def num_visual_tokens(self) -> int:
        return self.vision[0].num_patches * len(self.cameras)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VLMConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"model_type"})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})
