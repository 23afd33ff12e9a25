"""The Llama backbone: transformers' own `LlamaForCausalLM`, sized by our config (never downloaded)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import LlamaConfig, LlamaForCausalLM

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class LlamaSizes:
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None  # None = num_heads (Llama-2-7B has no GQA)
    intermediate_size: int = 688
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {kv}")

    def to_dict(self) -> dict:
        return asdict(self)


def llama_config(sizes: LlamaSizes, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_kv_heads or sizes.num_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        rope_theta=sizes.rope_theta,
        rms_norm_eps=sizes.rms_norm_eps,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def build_llama(config: LlamaConfig, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attn_implementation {attn_implementation!r}; valid: {ATTN_IMPLEMENTATIONS}"
        )
    return LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)


def padded_vocab(n: int, multiple: int) -> int:
    """Round the embedding table up to a multiple (OpenVLA pads 32000 -> 32064 with multiple 64)."""
    return ((n + multiple - 1) // multiple) * multiple if multiple > 0 else n


def float32_rotary(llm: LlamaForCausalLM, device) -> None:
    """Rebuild the rotary frequencies in float32 on ``device``, as transformers' from_pretrained(dtype=bf16)
    and the official OpenVLA / CogACT code keep them (bf16 frequencies put cos/sin off by up to 0.36 at
    position ~275 with head_dim 128; a meta-built model has none at all)."""
    llm.model.rotary_emb = type(llm.model.rotary_emb)(config=llm.model.config).to(device)
