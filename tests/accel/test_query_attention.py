"""The side probe (query_attention) reusing the layer's own rotary rows gives the recomputation's bits."""

import pytest
import torch
from fixtures.tiny_models import HIDDEN, make_llama

from vla_accel.accel.query_attention import query_attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reused_cos_sin_rows_equal_a_recomputation_bit_for_bit(dtype):
    llm = make_llama(num_layers=1).to(dtype)
    g = torch.Generator().manual_seed(0)
    B, S = 2, 40
    h = torch.randn(B, S, HIDDEN, generator=g).to(dtype)
    pos = torch.stack([torch.arange(S), torch.arange(S) + 7])  # two rows, different positions
    keys = torch.randn(B, 2, S, HIDDEN // 4, generator=g).to(dtype)  # (B, H_kv, S, hd)
    allowed = torch.ones(B, S, S, dtype=torch.bool).tril()
    cos, sin = llm.model.rotary_emb(h, pos)  # the whole group's rows, as the runner holds them
    rows = torch.tensor([[3, 17, 39], [0, 22, 38]])
    pick = lambda t: t.gather(1, rows[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
    a = query_attention(llm.model.layers[0], llm.model.rotary_emb, pick(h), pos.gather(1, rows), keys,
                        allowed.gather(1, rows[..., None].expand(-1, -1, S)))  # fmt: skip
    b = query_attention(llm.model.layers[0], llm.model.rotary_emb, pick(h), pos.gather(1, rows), keys,
                        allowed.gather(1, rows[..., None].expand(-1, -1, S)), cos_sin=(pick(cos), pick(sin)))  # fmt: skip
    assert torch.equal(a, b)
    last = query_attention(llm.model.layers[0], llm.model.rotary_emb, h[:, -1:], pos[:, -1:], keys, allowed[:, -1:],
                           cos_sin=(cos[:, -1:], sin[:, -1:]))  # fmt: skip
    assert torch.equal(last, query_attention(llm.model.layers[0], llm.model.rotary_emb, h[:, -1:], pos[:, -1:], keys,
                                             allowed[:, -1:]))  # fmt: skip
