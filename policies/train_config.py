"""The schema of the `train` section of `vla-accel train` (conf/train.yaml): its keys, types and defaults.

Hydra checks the types at compose; __post_init__ (run by ``validated(TrainSchema, cfg.train)`` in
run_train) checks what types cannot say.
"""

from dataclasses import dataclass, field
from typing import List, Optional

from vla_accel.conf import store_schema


@dataclass
class TrainSchema:
    steps: int = 6000
    batch_size: int = 32
    lr: float = 5.0e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    augment: str = "random_crop"  # vla_accel.policies.data.AUGMENTATIONS
    crop_area: float = 0.9
    freeze_vlm: bool = False
    init_vlm_from: Optional[str] = None
    init_from: Optional[str] = None
    ema_decay: float = 0.0  # 0 = off
    # pruning-robust training (policies/token_drop.py; CogACT-style only): on this share of the steps,
    # layers >= token_drop_layer see a random token_drop_keep share of the visual tokens
    token_drop_prob: float = 0.0  # 0 = off
    token_drop_layer: int = 2
    token_drop_keep: List[float] = field(default_factory=lambda: [0.125, 0.25, 0.5])
    seed: int = 0
    save_every: int = 1000
    keep_checkpoints: int = 2
    resume: bool = True
    probe_every: int = 500  # 0 = off
    probe_size: int = 32
    standardizer_frames: int = 512
    progress: bool = True
    num_threads: int = 0  # 0 = torch's default

    def __post_init__(self) -> None:
        # imported here: the data module pulls in torch, which registering this schema must not
        from vla_accel.policies.data import AUGMENTATIONS

        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"unknown train.augment {self.augment!r}; valid: {AUGMENTATIONS}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        self.token_drop()  # its own checks

    def token_drop(self):
        """The TokenDrop of these settings, or None when off."""
        from vla_accel.policies.token_drop import TokenDrop

        if self.token_drop_prob == 0.0:
            return None
        return TokenDrop(float(self.token_drop_prob), int(self.token_drop_layer),
                         tuple(float(r) for r in self.token_drop_keep))


store_schema("train", TrainSchema)
