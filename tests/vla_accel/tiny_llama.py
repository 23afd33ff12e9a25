"""Test helpers: a tiny random Llama, a synthetic left-padded VLA prompt, and a cache-free reference
forward that prunes at layer K by plain indexing (no runner code involved)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HIDDEN = 64


def make_llama(num_layers: int = 6, seed: int = 0, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
    )  # fmt: skip  (GQA: 4 query heads share 2 key/value heads; large init = sharp, position-sensitive attention)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn).eval()


def make_prompt(lengths=(30, 26, 28), num_visual: int = 16, seed: int = 1) -> dict:
    """Rows [pads][BOS][M visual][text...], left-padded to max(lengths); text = everything after the visual span."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    embeds = torch.randn(B, T, HIDDEN, generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    visual_start = torch.zeros(B, dtype=torch.long)
    text = torch.zeros(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, T - n :] = 1
        visual_start[b] = T - n + 1
        text[b, T - n + 1 + num_visual :] = True
    return dict(inputs_embeds=embeds, attention_mask=mask, visual_start=visual_start, num_visual=num_visual,
                text_mask=text)  # fmt: skip


@torch.no_grad()
def reference_logits(llm, embeds, mask2d, pos, prune_layer=None, keep_rows=None, skip=(), pos_after=None):
    """(B, S, V) logits of a cache-free forward; at layer ``prune_layer`` the sequence is cut to ``keep_rows``
    (B, S') indices (original position ids carried along, or ``pos_after`` (B, S') if given); ``skip``
    layers are not run."""
    x = embeds
    for i, layer in enumerate(llm.model.layers):
        if prune_layer is not None and i == prune_layer:
            x = x.gather(1, keep_rows[..., None].expand(-1, -1, x.shape[-1]))
            mask2d, pos = mask2d.gather(1, keep_rows), pos.gather(1, keep_rows) if pos_after is None else pos_after
        if i in skip:
            continue
        S = x.shape[1]
        causal = torch.ones(S, S, dtype=torch.bool).tril()[None, None] & mask2d.bool()[:, None, None, :]
        x = layer(x, attention_mask=causal, position_embeddings=llm.model.rotary_emb(x, pos), position_ids=pos)
    return llm.lm_head(llm.model.norm(x))
