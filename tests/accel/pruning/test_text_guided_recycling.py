"""SparseVLM's token recycling as an option of text_guided: pruned tokens merged into a few averaged ones."""

import pytest
import torch
from fixtures.staged_reference import staged_reference
from fixtures.tiny_models import HIDDEN, make_llama, make_prompt

from vla_accel.accel.config import AccelConfig, TokenPruningConfig
from vla_accel.accel.pruning import SelectionContext, build_method
from vla_accel.accel.runner import AcceleratedRunner
from vla_accel.policies.common.prompt import kept_token_index, positions_from_mask

M = 16


def config(keep_ratio=0.5, **params):
    return AccelConfig(pruning=TokenPruningConfig(method="text_guided", keep_ratio=keep_ratio, params=params))


@pytest.fixture(scope="module")
def llm():
    return make_llama(num_layers=6)


def test_without_recycling_it_is_todays_text_guided(llm):
    prompt = make_prompt()
    plain, zero = AcceleratedRunner(config()), AcceleratedRunner(config(recycle_tokens=0))
    a, b = plain.prefill(llm, **prompt), zero.prefill(llm, **prompt)
    assert torch.equal(a.logits, b.logits) and torch.equal(plain.stats.kept_visual, zero.stats.kept_visual)
    att = torch.rand(3, M)
    kept, merge = build_method("text_guided").select_and_merge(
        SelectionContext(visual_embeds=torch.randn(3, M, 4), visual_attention=att, budget=5))
    assert merge is None and torch.equal(kept, att.topk(5).indices.sort().values)
    assert not build_method("text_guided").needs_visual_hidden


def test_the_best_pruned_tokens_are_clustered_and_merged_into_their_centres():
    """budget 5 with 2 recycled: the 3 best tokens are kept by score; the pruned pool is the next
    ceil(0.3 * 7) = 3 best (tokens 4, 7, 1); 4 and 7 point the same way, 1 elsewhere, so the centres are
    1 and one of {4, 7}, and the other of {4, 7} merges into it. Nothing else is merged."""
    att = torch.tensor([[0.30, 0.05, 0.00, 0.20, 0.08, 0.01, 0.25, 0.07, 0.02, 0.02]])  # order 0 6 3 | 4 7 1 ...
    hidden = torch.randn(1, 10, 4)
    hidden[0, 4], hidden[0, 7], hidden[0, 1] = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.9, 0.1, 0, 0]), \
        torch.tensor([0.0, 0, 1.0, 0])
    method = build_method("text_guided", recycle_tokens=2)
    ctx = SelectionContext(visual_embeds=torch.randn(1, 10, 4), visual_attention=att, budget=5, visual_hidden=hidden)
    kept, merge = method.select_and_merge(ctx)
    kept, merge = kept[0].tolist(), merge[0].tolist()
    assert len(kept) == 5 and {0, 3, 6, 1} <= set(kept) and len({4, 7} & set(kept)) == 1  # M~ in all
    centre = 4 if 4 in kept else 7
    assert merge[4] == merge[7] == centre and merge[1] == 1
    assert all(merge[m] == -1 for m in (0, 2, 3, 5, 6, 8, 9))
    assert method.select(ctx)[0].tolist() == kept
    with pytest.raises(ValueError, match="leaves no token"):
        build_method("text_guided", recycle_tokens=5).select_and_merge(ctx)


def test_a_merged_token_is_the_mean_of_its_group_at_its_centres_position(llm):
    """Through the runner: entering layer K, each merged token's row holds the mean of its group's hidden
    states (the unpruned forward's, at that layer), the other rows are untouched, and the whole prefill
    equals a cache-free forward cut before K with those means put in the centres' rows at the centres'
    original position ids."""
    prompt = make_prompt()
    B, T = prompt["attention_mask"].shape
    runner = AcceleratedRunner(config(keep_ratio=0.5, recycle_tokens=2, recycle_ratio=1.0))
    seen, orig = [], runner.method.select_and_merge
    runner.method.select_and_merge = lambda ctx: seen.append(orig(ctx)) or seen[-1]
    K = runner.plan(llm).prune_layer
    entering = {}
    hook = llm.model.layers[K].register_forward_pre_hook(lambda m, args: entering.setdefault("x", args[0]))
    try:
        res = runner.prefill(llm, **prompt)
    finally:
        hook.remove()
    (kept, merge), = seen
    assert kept.shape == (B, 8) and int((merge >= 0).sum(-1).min()) == M - 6  # recycle_ratio 1: every pruned token
    pos = positions_from_mask(prompt["attention_mask"])
    _, rec = staged_reference(llm, prompt["inputs_embeds"], prompt["attention_mask"], pos, {}, record=(K,))
    full = rec[K]["input"]  # (B, T, D) what layer K sees without pruning
    vs = prompt["visual_start"][:, None]
    keep_index = kept_token_index(T, prompt["visual_start"], M, kept)
    rows = torch.searchsorted(keep_index, vs + kept)  # kept visual tokens' rows after the cut
    expect = full.gather(1, keep_index[..., None].expand(-1, -1, HIDDEN)).clone()
    for b in range(B):
        for j, m in enumerate(kept[b].tolist()):
            group = (merge[b] == m).nonzero()[:, 0]
            if len(group):
                expect[b, rows[b, j]] = full[b, vs[b, 0] + group].mean(0)
    torch.testing.assert_close(entering["x"], expect, atol=1e-5, rtol=1e-5)
    assert int((merge >= 0).any(-1).sum()) == B
    ref, _ = staged_reference(llm, prompt["inputs_embeds"], prompt["attention_mask"], pos, {K: keep_index},
                              edits={K: lambda x: expect})  # fmt: skip
    torch.testing.assert_close(res.logits, ref[:, -1], atol=2e-5, rtol=1e-4)
    assert res.cache.kv.layers[K].keys.shape[2] == keep_index.shape[1] == T - M + 8  # budget in total
    assert torch.equal(res.next_position, pos[:, -1] + 1)
    assert runner.call_stats()["keep_ratio"] == 0.5
