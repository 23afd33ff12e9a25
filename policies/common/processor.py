"""The processor both VLAs share (OpenVLA's): images -> pixel values, instruction -> prompt token ids.

The prompt is OpenVLA's "In: What action should the robot take to {instruction}?\\nOut:" with the
instruction lower-cased; the whole prompt is tokenised at once (as OpenVLA does) and the character
offsets mark which tokens belong to the instruction (the runner's `text_mask`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from vla_accel.policies.common.image_processor import ImageProcessor
from vla_accel.policies.common.observation import ParsedObs
from vla_accel.policies.common.vlm_config import VLMConfig

PROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class ProcessedInputs:
    pixel_values: torch.Tensor  # (B, n_cameras, 3 * n_encoders, S, S) float
    text_ids: list[list[int]]  # prompt token ids per row (without BOS)
    instr_masks: list[list[bool]]  # which prompt tokens are the instruction


class VLAProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: VLMConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.image_processor = ImageProcessor(
            config.image_size,
            [v.image_mean for v in config.vision],
            [v.image_std for v in config.vision],
            crop_scale=config.crop_scale,
            interpolation=config.resize_interpolation,
        )

    def prompt(self, instruction: str) -> tuple[str, tuple[int, int]]:
        """The prompt string and the character span of the instruction inside it."""
        text = instruction.strip()
        if self.config.lowercase_instruction:
            text = text.lower()
        head, _, _ = self.config.prompt_template.partition("{instruction}")
        prompt = self.config.prompt_template.format(instruction=text)
        return prompt, (len(head), len(head) + len(text))

    def tokenize(self, instructions: list[str]) -> tuple[list[list[int]], list[list[bool]]]:
        ids, masks = [], []
        for instruction in instructions:
            prompt, (lo, hi) = self.prompt(instruction)
            enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
            row = list(enc["input_ids"]) + list(self.config.prompt_suffix_ids)
            mask = [s < hi and e > lo for s, e in enc["offset_mapping"]]
            ids.append(row)
            masks.append(mask + [False] * len(self.config.prompt_suffix_ids))
        return ids, masks

    def pixel_values(self, images: dict, device=None) -> torch.Tensor:
        """images: camera -> (B, H, W, 3) uint8 -> (B, n_cameras, 3 * n_encoders, S, S)."""
        per_cam = [self.image_processor(images[cam], device) for cam in self.config.cameras]
        return torch.stack(per_cam, dim=1)

    def __call__(self, parsed: ParsedObs, device=None) -> ProcessedInputs:
        ids, masks = self.tokenize(parsed.instructions)
        return ProcessedInputs(self.pixel_values(parsed.images, device), ids, masks)

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))
        (Path(path) / PROCESSOR_FILE).write_text(json.dumps(
            {"processor_class": "VLAProcessor", **self.image_processor.to_dict(),
             "prompt_template": self.config.prompt_template}, indent=2))
