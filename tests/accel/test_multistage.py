"""Multi-stage pruning in the runner (FEATHER, ToDRE): every stage keeps a subset of the previous one, and
prefill + decode equal a cache-free two-stage recompute at the original positions."""

import pytest
import torch
from fixtures.staged_reference import staged_reference
from fixtures.tiny_models import HIDDEN, make_llama, make_prompt

import vla_accel.accel.runner as runner_mod
from vla_accel.accel.config import AccelConfig, TokenPruningConfig
from vla_accel.accel.runner import AcceleratedRunner
from vla_accel.policies.common.prompt import kept_token_index, positions_from_mask

M = 16


@pytest.fixture(scope="module")
def llm():
    return make_llama(num_layers=6)


def config(method, layer, keep_ratio=0.25, **params):
    return AccelConfig(pruning=TokenPruningConfig(method=method, keep_ratio=keep_ratio, layer=layer, params=params))


def spy_stages(runner):
    """Record every stage's SelectionContext and answer."""
    seen, orig = [], runner.method.select
    runner.method.select = lambda ctx: seen.append((ctx, orig(ctx))) or seen[-1][1]
    return seen


@pytest.mark.parametrize("method,layer,params,budgets", [
    ("feather", 2, {"second_layer": 4, "rope_free": False}, (12, 4)),  # FastV criterion at both stages
    ("feather", 1, {"second_layer": 3}, (12, 4)),                      # FEATHER's rope-free criterion
    ("todre", 0, {"relevance_layer": 3}, (8, 4)),                      # k-center before the LLM, then text
])  # fmt: skip
def test_two_stage_prefill_and_decode_match_a_cache_free_two_stage_recompute(llm, method, layer, params, budgets):
    prompt = make_prompt()
    g = torch.Generator().manual_seed(5)
    tokens = [torch.randn(3, 1, HIDDEN, generator=g) for _ in range(3)]
    runner = AcceleratedRunner(config(method, layer, **params))
    seen = spy_stages(runner)
    res = runner.prefill(llm, **prompt)
    got, pos_next = [res.logits], res.next_position[:, None]
    for tok in tokens:
        got.append(runner.decode_one_token(llm, tok, res.cache, pos_next)[0])
        pos_next = pos_next + 1
    (ctx1, kept1), (ctx2, kept2) = seen
    assert (kept1.shape[1], kept2.shape[1]) == budgets and ctx2.candidates is kept1
    assert all(set(b.tolist()) <= set(a.tolist()) for a, b in zip(kept1, kept2))  # a subset per row
    B, T = prompt["attention_mask"].shape
    n = len(tokens)
    k1, k2 = runner.plan(llm).stage_layers
    idx1 = kept_token_index(T, prompt["visual_start"], M, kept1)  # prompt indices after stage 1
    idx2 = kept_token_index(T, prompt["visual_start"], M, kept2)
    rows2 = torch.searchsorted(idx1, idx2)  # stage 2's rows among stage 1's
    dec = T + torch.arange(n).expand(B, n)
    rows1_full = torch.cat([idx1, dec], 1)  # the decoded tokens ride along in both cuts
    rows2_full = torch.cat([rows2, idx1.shape[1] + torch.arange(n).expand(B, n)], 1)
    embeds = torch.cat([prompt["inputs_embeds"], *tokens], 1)
    mask = torch.cat([prompt["attention_mask"], torch.ones(B, n, dtype=torch.long)], 1)
    pos = torch.cat([positions_from_mask(prompt["attention_mask"]), res.next_position[:, None] + torch.arange(n)], 1)
    ref, _ = staged_reference(llm, embeds, mask, pos, {k1: rows1_full, k2: rows2_full})
    for j, logits in enumerate(got):  # the prompt's last token, then each decoded token
        torch.testing.assert_close(logits, ref[:, idx2.shape[1] - 1 + j], atol=2e-5, rtol=1e-4)
    for i in range(6):  # each layer's cache holds exactly the tokens it saw (+ the decoded ones)
        expect = T if i < k1 else (idx1.shape[1] if i < k2 else idx2.shape[1])
        assert res.cache.kv.layers[i].keys.shape[2] == expect + n
    assert runner.stats.stage_tokens == [(k1, idx1.shape[1]), (k2, idx2.shape[1])]


def test_a_later_stage_scores_only_the_kept_tokens_with_that_layers_attention(llm):
    """Stage 2's visual_attention (FastV criterion, layer K_2 - 1) == the eager attention weights of the
    pruned sequence's last query at that layer, over the stage-1 tokens."""
    eager = make_llama(num_layers=6, attn="eager")
    eager.load_state_dict(llm.state_dict())
    prompt = make_prompt()
    runner = AcceleratedRunner(config("feather", 2, second_layer=4, rope_free=False))
    seen = spy_stages(runner)
    runner.prefill(llm, **prompt)
    (_, kept1), (ctx2, _) = seen
    B, T = prompt["attention_mask"].shape
    idx1 = kept_token_index(T, prompt["visual_start"], M, kept1)
    pos = positions_from_mask(prompt["attention_mask"])
    _, seen_ref = staged_reference(eager, prompt["inputs_embeds"], prompt["attention_mask"], pos, {2: idx1},
                                   capture_layer=3)  # fmt: skip
    w = seen_ref["weights"]
    slots = torch.searchsorted(idx1, prompt["visual_start"][:, None] + kept1)
    expect = w.float().mean(1)[:, -1].gather(1, slots)  # (B, 12)
    torch.testing.assert_close(ctx2.visual_attention, expect, atol=1e-5, rtol=1e-4)


def test_rope_free_criterion_differs_from_the_rope_one_and_ignores_positions(llm):
    """FEATHER's score does not change when every position id is shifted (no RoPE); FastV's does."""
    prompt = make_prompt()
    scores = {}
    for rope_free in (True, False):
        for shift in (0, 7):
            runner = AcceleratedRunner(config("feather", 2, second_layer=4, rope_free=rope_free))
            seen = spy_stages(runner)
            orig = runner_mod.positions_from_mask
            runner_mod.positions_from_mask = lambda m, _o=orig, _s=shift: _o(m) + _s
            try:
                runner.prefill(llm, **prompt)
            finally:
                runner_mod.positions_from_mask = orig
            scores[rope_free, shift] = seen[0][0].visual_attention
    torch.testing.assert_close(scores[True, 0], scores[True, 7], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(scores[False, 0], scores[True, 0], atol=1e-4)


def test_stage_layers_are_validated_against_the_model(llm):
    with pytest.raises(ValueError, match="beyond the model's 6 layers"):
        AcceleratedRunner(config("feather", 2, second_layer=6)).plan(llm)
    with pytest.raises(ValueError, match="strictly increasing"):
        AcceleratedRunner(config("feather", 3, second_layer=3)).plan(llm)
