"""Configuration of the OpenVLA-style policy (a `VLMConfig` plus the action-token decoding)."""

from __future__ import annotations

from dataclasses import dataclass

from vla_accel.policies.common.vlm_config import VLMConfig

MODEL_TYPE = "vla_accel_openvla"


@dataclass
class OpenVLAConfig(VLMConfig):
    n_action_bins: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.n_action_bins <= 4096:
            raise ValueError(f"n_action_bins must be in [2, 4096], got {self.n_action_bins}")
