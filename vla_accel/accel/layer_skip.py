"""EfficientVLA's layer pruning: rank the LLM's layers by how much they change the hidden state.

I(l) = 1 - mean over calibration samples and token positions of cos(x_l, x_{l+1}), where x_l is layer
l's input and x_{l+1} its output. A layer whose output is nearly its input (I near 0) is redundant;
the n least important layers are skipped (not necessarily contiguous).

``calibrate_layer_skip(llm, samples, path)`` measures I on a list of prefill inputs and writes the
ranking as JSON; ``LayerSkipConfig(ranking_file=path, num_drop=n)`` then skips its first n layers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache, LlamaForCausalLM
from transformers.masking_utils import create_causal_mask

from vla_accel.policies.common.hf_compat import cache_kwarg
from vla_accel.policies.common.prompt import positions_from_mask
from vla_accel.policies.llm_runner import HFRunner


@torch.no_grad()
def layer_cosines(llm: LlamaForCausalLM, inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
    """(L,) mean over the real (non-pad) tokens of cos(x_l, x_{l+1}) for one prefill (B rows pooled)."""
    x = inputs_embeds
    pos = positions_from_mask(attention_mask)
    cache = DynamicCache(config=llm.config)
    causal = create_causal_mask(config=llm.config, inputs_embeds=x, attention_mask=attention_mask,
                                **cache_kwarg(create_causal_mask, cache), position_ids=pos)  # fmt: skip
    pos_emb = llm.model.rotary_emb(x, pos)
    real = attention_mask.bool()  # (B, T)
    out = []
    for layer in llm.model.layers:
        y = layer(x, attention_mask=causal, position_embeddings=pos_emb, position_ids=pos,
                  **cache_kwarg(layer, cache), use_cache=True)  # fmt: skip
        cos = F.cosine_similarity(x.float(), y.float(), dim=-1)  # (B, T)
        out.append(cos[real].mean())
        x = y
    return torch.stack(out)


def layer_importance(llm: LlamaForCausalLM, samples: Iterable[Mapping[str, Tensor]]) -> Tensor:
    """(L,) I(l) = 1 - mean over samples of the per-sample mean cosine. Each sample is a dict with
    ``inputs_embeds`` (B, T, D) and ``attention_mask`` (B, T) (extra keys, e.g. the runner's, are ignored)."""
    cosines = [layer_cosines(llm, s["inputs_embeds"], s["attention_mask"]) for s in samples]
    if not cosines:
        raise ValueError("layer_importance: no calibration samples")
    return 1.0 - torch.stack(cosines).mean(0)


def calibrate_layer_skip(llm: LlamaForCausalLM, samples: Iterable[Mapping[str, Tensor]], path: str | Path) -> dict:
    """Measure I(l) and write ``{"num_layers", "importance", "ranking" (least important first),
    "num_samples", "date"}`` to ``path`` (JSON). Returns the same dict."""
    samples = list(samples)
    importance = layer_importance(llm, samples)
    ranking = torch.argsort(importance, stable=True).tolist()
    result = {
        "num_layers": int(llm.config.num_hidden_layers),
        "importance": [float(v) for v in importance],
        "ranking": ranking,
        "num_samples": len(samples),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "formula": "I(l) = 1 - mean_{samples, tokens} cos(x_l, x_{l+1})",
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    return result


class _PrefillRecorder(HFRunner):
    """The plain runner (transformers' forward) keeping a copy of every prefill's inputs."""

    def __init__(self) -> None:
        self.samples: list[dict[str, Tensor]] = []

    def prefill(self, llm, inputs_embeds, attention_mask, visual_start, num_visual, text_mask):
        self.samples.append({"inputs_embeds": inputs_embeds.detach().clone(),
                             "attention_mask": attention_mask.detach().clone()})  # fmt: skip
        return super().prefill(llm, inputs_embeds, attention_mask, visual_start, num_visual, text_mask)


def calibrate_policy_layer_skip(policy, observations: Iterable[dict], path: str | Path) -> dict:
    """Calibrate on a VLA policy's own prompts: run ``policy.predict_action_chunk`` on each observation
    with a recording runner, then :func:`calibrate_layer_skip` on the recorded prefills. The policy's
    runner is restored afterwards."""
    recorder, original = _PrefillRecorder(), policy.runner
    policy.runner = recorder
    try:
        policy.reset()
        for obs in observations:
            policy.predict_action_chunk(obs)
    finally:
        policy.runner = original
        policy.reset()
    return calibrate_layer_skip(policy.language_model, recorder.samples, path)
