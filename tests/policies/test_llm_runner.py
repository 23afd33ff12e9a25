"""HFRunner against plain full forwards of the same LlamaForCausalLM."""

import torch
from transformers import LlamaConfig

from vla_accel.policies.common.llm import build_llama
from vla_accel.policies.common.prompt import positions_from_mask
from vla_accel.policies.llm_runner import HFRunner, LLMRunner


def tiny_llm():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return build_llama(cfg).eval()


def test_prefill_and_decode_match_full_forwards_with_left_padding():
    llm, runner = tiny_llm(), HFRunner()
    assert isinstance(runner, LLMRunner)
    b, t, d = 2, 7, 32
    embeds = torch.randn(b, t, d)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, :3] = 0  # row 1 is left-padded by 3
    with torch.no_grad():
        res = runner.prefill(llm, embeds, mask, torch.tensor([1, 4]), 2, torch.zeros(b, t, dtype=torch.bool))
        assert res.logits.shape == (b, 96) and res.hidden.shape == (b, d)
        assert res.next_position.tolist() == [7, 4]
        new = torch.randn(b, 1, d)
        logits, hidden = runner.decode_one_token(llm, new, res.cache, res.next_position[:, None])
        # reference: each row alone, unpadded, full sequence
        for i in range(b):
            real = embeds[i : i + 1, mask[i].bool()]
            full = torch.cat([real, new[i : i + 1]], dim=1)
            ref = llm(inputs_embeds=real).logits[0, -1]
            torch.testing.assert_close(res.logits[i], ref, atol=1e-5, rtol=1e-5)
            ref2 = llm(inputs_embeds=full).logits[0, -1]
            torch.testing.assert_close(logits[i], ref2, atol=1e-5, rtol=1e-5)


def test_positions_are_cumsum_minus_one_with_pads_at_zero():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
