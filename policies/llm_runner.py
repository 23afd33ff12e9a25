"""The LLM runner seam (docs/interfaces.md): every LLM call of the VLA policies goes through one.

`HFRunner` is the plain runner: transformers' own `LlamaModel` forward with a `DynamicCache`, explicit
position ids cumsum(mask) - 1, and the left-padding mask carried in the cache object so that decode
steps keep ignoring the pads. The accelerator swaps in its own runner with the same methods. Besides
the LLM calls, the runner is the policy's seam for episode state: the policy hands it each frame's
pixels on image encoding (`observe_frame`, VLA-Cache's input), answers whether it wants encoder attention
maps (`encoder_attention_request`: a `vision.AttentionProbe` or None; the maps come back through
`observe_encoder_attention`), receives each step's normalised actions (`observe_actions`, before
`end_step`: the motion history of adaptive budgets), and forks it for a new episode (`fork`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import DynamicCache, LlamaForCausalLM

from vla_accel.policies.common.hf_compat import cache_kwarg
from vla_accel.policies.common.prompt import positions_from_mask


@dataclass
class PrefillResult:
    logits: Tensor  # (B, V) next-token logits at each row's last prompt position
    hidden: Tensor  # (B, D) final-normed last-layer hidden state there (CogACT's cognition feature)
    cache: Any  # the KV cache, handed back to decode_one_token
    next_position: Tensor  # (B,) long: the RoPE position id of each row's next token


@runtime_checkable
class LLMRunner(Protocol):
    def reset(self) -> None: ...

    def fork(self) -> "LLMRunner": ...

    def observe_frame(self, pixel_values: Tensor, num_visual: int) -> None: ...

    def encoder_attention_request(self) -> Any: ...

    def observe_encoder_attention(self, maps: dict[int, Tensor]) -> None: ...

    def prefill(self, llm: LlamaForCausalLM, inputs_embeds: Tensor, attention_mask: Tensor,
                visual_start: Tensor, num_visual: int, text_mask: Tensor) -> PrefillResult: ...

    def decode_one_token(self, llm: LlamaForCausalLM, token_embeds: Tensor, cache: Any,
                         position_ids: Tensor) -> tuple[Tensor, Tensor]: ...

    def observe_actions(self, actions: Any) -> None: ...  # (B, H, A) normalised, before end_step

    def end_step(self) -> None: ...


@dataclass
class HFCache:
    """A DynamicCache plus the (B, T_past) attention mask over what it holds (left pads = 0)."""

    kv: DynamicCache
    attention_mask: Tensor


class HFRunner:
    """transformers' forward, nothing changed: the reference every other runner must match."""

    def reset(self) -> None:  # no temporal state
        pass

    def fork(self) -> "HFRunner":
        return HFRunner()  # stateless, but a forked episode never shares a runner

    def observe_frame(self, pixel_values: Tensor, num_visual: int) -> None:
        pass  # the plain forward needs nothing of the frame

    def encoder_attention_request(self) -> None:
        return None  # asks for no encoder attention: the vision tower runs its plain forward

    def observe_encoder_attention(self, maps: dict[int, Tensor]) -> None:
        pass

    def observe_actions(self, actions: Any) -> None:
        pass  # no per-episode state

    def end_step(self) -> None:
        pass

    def prefill(self, llm: LlamaForCausalLM, inputs_embeds: Tensor, attention_mask: Tensor,
                visual_start: Tensor, num_visual: int, text_mask: Tensor) -> PrefillResult:
        cache = DynamicCache(config=llm.config)
        position_ids = positions_from_mask(attention_mask)
        out = llm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                        position_ids=position_ids, **cache_kwarg(llm.model, cache), use_cache=True)
        hidden = out.last_hidden_state[:, -1]  # (B, D); prompts are left-padded, so -1 is last real
        logits = llm.lm_head(hidden)
        return PrefillResult(logits=logits, hidden=hidden,
                             cache=HFCache(cache, attention_mask.clone()),
                             next_position=position_ids[:, -1] + 1)

    def decode_one_token(self, llm: LlamaForCausalLM, token_embeds: Tensor, cache: HFCache,
                         position_ids: Tensor) -> tuple[Tensor, Tensor]:
        ones = torch.ones_like(cache.attention_mask[:, :1])
        cache.attention_mask = torch.cat([cache.attention_mask, ones], dim=1)  # (B, T_past + 1)
        out = llm.model(inputs_embeds=token_embeds, attention_mask=cache.attention_mask,
                        position_ids=position_ids, **cache_kwarg(llm.model, cache.kv), use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        return llm.lm_head(hidden), hidden
