"""The vision -> LLM projector (Prismatic/OpenVLA names `fc1`, `fc2`, `fc3`).

3 layers ("fused" projector, OpenVLA's for DINOv2+SigLIP): vision_dim -> 4*vision_dim -> llm_dim ->
llm_dim with GELU between. 2 layers (Prismatic's single-backbone "gelu-mlp"): vision_dim -> llm_dim ->
llm_dim. `standardize=True` adds `out_norm`, a batch-statistics standardiser of the visual tokens for
VLMs trained from scratch (standardizer.py says why).
"""

from __future__ import annotations

import torch
from torch import nn

from vla_accel.policies.common.standardizer import FeatureStandardizer


class Projector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int, num_layers: int = 3, standardize: bool = False) -> None:
        super().__init__()
        if num_layers not in (2, 3):
            raise ValueError(f"projector num_layers must be 2 or 3, got {num_layers}")
        self.num_layers = num_layers
        if num_layers == 3:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
            self.act_fn2 = nn.GELU()
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.out_norm = FeatureStandardizer(llm_dim) if standardize else nn.Identity()

    def project(self, patches: torch.Tensor) -> torch.Tensor:  # (B, M, Dv) -> (B, M, D), unstandardised
        x = self.fc2(self.act_fn1(self.fc1(patches)))
        if self.num_layers == 3:
            x = self.fc3(self.act_fn2(x))
        return x

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # (B, M, Dv) -> (B, M, D)
        return self.out_norm(self.project(patches))
