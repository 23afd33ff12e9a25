"""TransPrune: TTV (magnitude x softmaxed direction change through each sublayer) + IGA, in three stages."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.staged_reference import staged_reference
from fixtures.tiny_models import HIDDEN, make_llama, make_prompt, obs, tiny_openvla

from vla_accel.accel.accelerate import accelerate
from vla_accel.accel.config import AccelConfig, TokenPruningConfig, load_accel_config, resolve_plan
from vla_accel.accel.pruning import SelectionContext, build_method
from vla_accel.accel.pruning.transprune import module_ttv
from vla_accel.accel.runner import AcceleratedRunner
from vla_accel.policies.common.prompt import kept_token_index, positions_from_mask

M = 16


def test_module_ttv_is_the_norm_ratio_times_the_softmaxed_direction_change():
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]])  # (1, 3, 2)
    fx = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-3.0, -4.0]]])
    ratio = torch.tensor([2.0, 0.5, 1.0])  # ||f|| / ||x||
    direction = torch.tensor([0.0, 1.0, 2.0])  # 1 - cos: same, orthogonal, opposite
    expect = ratio * direction.exp() / direction.exp().sum()
    torch.testing.assert_close(module_ttv(x, fx)[0], expect)


def test_the_tokens_with_the_largest_transitions_are_kept():
    """Tokens 2, 5 and 9 turn by 90 degrees and double in length in both sublayers; the others barely
    change. With TTV alone (and with uniform IGA at the default weight) exactly those three survive."""
    g = torch.Generator().manual_seed(0)
    B, C, D = 2, 12, 8
    x = torch.randn(B, C, D, generator=g)
    fx = 0.01 * x  # same direction, tiny update: magnitude 0.01, direction change 0
    big = [2, 5, 9]
    turn = torch.randn(B, len(big), D, generator=g)
    turn = turn - (turn * x[:, big]).sum(-1, keepdim=True) / x[:, big].norm(dim=-1, keepdim=True) ** 2 * x[:, big]
    fx[:, big] = 2 * x[:, big].norm(dim=-1, keepdim=True) * F.normalize(turn, dim=-1)  # orthogonal, twice as long
    for weight in (0.0, 0.5):
        method = build_method("transprune", iga_weight=weight)
        layer_score = method.transition_score({"attention": (x, fx), "mlp": (x, fx)})  # (B, C)
        ctx = SelectionContext(visual_embeds=x, visual_attention=torch.full((B, C), 1.0 / C), budget=3,
                               transition_scores={6: layer_score})  # fmt: skip
        assert method.select(ctx).tolist() == [big, big]
    assert build_method("transprune", iga_weight=0.0).score_queries is None  # TTV alone: no attention at all


def test_ttv_accumulates_over_layers_and_combines_with_iga_half_and_half():
    method = build_method("transprune")
    ttv = {6: torch.tensor([[1.0, 0.0, 0.0, 1.0]]), 7: torch.tensor([[1.0, 0.0, 0.0, 1.0]])}  # sum -> [.5 0 0 .5]
    iga = torch.tensor([[0.0, 0.6, 0.3, 0.1]])  # over the candidates [1, 4, 6, 7] of a later stage
    cand = torch.tensor([[1, 4, 6, 7]])
    scores = {k: torch.zeros(1, 8).scatter_(1, cand, v) for k, v in ttv.items()}
    ctx = SelectionContext(visual_embeds=torch.randn(1, 8, 4), visual_attention=iga, budget=2, stage=1,
                           candidates=cand, transition_scores=scores)  # fmt: skip
    # 0.5 * [.5, 0, 0, .5] + 0.5 * [0, .6, .3, .1] = [.25, .3, .15, .3]: candidates 4 and 7
    assert method.select(ctx).tolist() == [[4, 7]]


def test_paper_layers_budgets_and_transition_layers_on_32_layers():
    plan = resolve_plan(load_accel_config("transprune"), 32)
    assert plan.stage_layers == (7, 9, 12)  # pruning after layers 7, 9, 12 (1-indexed), as released
    assert plan.score_layers == (6, 8, 11)  # IGA at K-1
    assert plan.transition_layers == tuple(range(6, 12))  # released: accumulating layers 7..12 (1-indexed)
    method = build_method("transprune")
    assert method.stage_budgets(256, 32) == (224, 160, 32)  # 87.5%, 62.5%, 12.5%
    assert build_method("transprune", schedule="geometric").stage_budgets(256, 32) == (128, 64, 32)
    assert method.stage_budgets(16, 4) == (14, 11, 4)
    with pytest.raises(ValueError, match="3 stages"):
        build_method("transprune", later_layers=[9]).stage_budgets(256, 32)
    with pytest.raises(ValueError, match="schedule"):
        build_method("transprune", schedule="linear")


def _spy(runner):
    seen, orig = [], runner.method.select
    runner.method.select = lambda ctx: seen.append((ctx, orig(ctx))) or seen[-1][1]
    return seen


@pytest.fixture(scope="module")
def llm():
    return make_llama(num_layers=6)


def test_three_stages_through_the_runner_match_a_cache_free_staged_recompute(llm):
    """Prefill + decode == a cache-free forward cut before K = 1, 2, 3 at the original positions; every
    layer's cache holds the tokens it saw; the TTV the runner hands over is the one of the layers' real
    sublayer inputs and outputs."""
    prompt = make_prompt()
    B, T = prompt["attention_mask"].shape
    config = AccelConfig(pruning=TokenPruningConfig(method="transprune", keep_ratio=0.25))
    runner = AcceleratedRunner(config)
    seen = _spy(runner)
    res = runner.prefill(llm, **prompt)
    g = torch.Generator().manual_seed(3)
    tokens = [torch.randn(B, 1, HIDDEN, generator=g) for _ in range(2)]
    got, pos_next = [res.logits], res.next_position[:, None]
    for tok in tokens:
        got.append(runner.decode_one_token(llm, tok, res.cache, pos_next)[0])
        pos_next = pos_next + 1
    plan = runner.plan(llm)
    assert plan.stage_layers == (1, 2, 3) and plan.transition_layers == (0, 1, 2)
    kept = [k for _, k in seen]
    assert [k.shape[1] for k in kept] == [14, 11, 4]
    assert all(set(b.tolist()) <= set(a.tolist()) for s in range(2) for a, b in zip(kept[s], kept[s + 1]))
    idx = [kept_token_index(T, prompt["visual_start"], M, k) for k in kept]
    n = len(tokens)
    dec = torch.arange(n).expand(B, n)
    cuts = {1: torch.cat([idx[0], T + dec], 1),
            2: torch.cat([torch.searchsorted(idx[0], idx[1]), idx[0].shape[1] + dec], 1),
            3: torch.cat([torch.searchsorted(idx[1], idx[2]), idx[1].shape[1] + dec], 1)}  # fmt: skip
    embeds = torch.cat([prompt["inputs_embeds"], *tokens], 1)
    mask = torch.cat([prompt["attention_mask"], torch.ones(B, n, dtype=torch.long)], 1)
    pos = torch.cat([positions_from_mask(prompt["attention_mask"]), res.next_position[:, None] + dec], 1)
    ref, rec = staged_reference(llm, embeds, mask, pos, cuts, record=(0, 1, 2))
    for j, logits in enumerate(got):
        torch.testing.assert_close(logits, ref[:, idx[2].shape[1] - 1 + j], atol=2e-5, rtol=1e-4)
    for i in range(6):
        expect = T if i < 1 else idx[min(i, 3) - 1].shape[1]
        assert res.cache.kv.layers[i].keys.shape[2] == expect + n
    assert runner.stats.stage_tokens == [(1, idx[0].shape[1]), (2, idx[1].shape[1]), (3, idx[2].shape[1])]
    assert runner.call_stats()["keep_ratio"] == 0.25
    last_ctx = seen[-1][0]
    visual = [torch.arange(M).expand(B, M), kept[0], kept[1]]  # the visual tokens layers 0, 1, 2 saw
    for layer, rows, vis in zip((0, 1, 2), [None, idx[0], idx[1]], visual):
        at_visual = prompt["visual_start"][:, None] + vis  # their prompt indices
        slots = at_visual if rows is None else torch.searchsorted(rows, at_visual)  # their rows at that layer
        at = lambda t: t.gather(1, slots[..., None].expand(-1, -1, HIDDEN))  # noqa: E731
        expect = sum(module_ttv(at(a), at(f)) for a, f in (rec[layer]["attention"], rec[layer]["mlp"]))
        got_ttv = last_ctx.transition_scores[layer]
        torch.testing.assert_close(got_ttv.gather(1, vis), expect, atol=1e-5, rtol=1e-4)
        assert bool((got_ttv.sum(-1) > 0).all()) and int((got_ttv != 0).sum(-1).max()) <= vis.shape[1]


def test_transprune_runs_on_the_tiny_openvla_policy():
    policy = tiny_openvla()
    accelerate(policy, "transprune", keep_ratio=0.25)
    out = policy.predict_action_chunk(obs(batch=2))
    stats, Mv = policy.runner.stats, policy.config.num_visual_tokens
    assert np.isfinite(out).all() and stats.pruned and stats.kept_visual.shape == (2, round(Mv * 0.25))
    assert len(stats.stage_tokens) == 3 and policy.last_timing["select"] > 0


def _rows_keeping(T, visual_start, kept):
    """(B, T - M + M~) the prompt indices of every non-visual token plus the kept visual ones, ascending
    (written out here so that the reference below shares no index code with the runner)."""
    out = []
    for b in range(kept.shape[0]):
        vs = int(visual_start[b])
        visual = set(range(vs, vs + M))
        out.append(sorted([t for t in range(T) if t not in visual] + [vs + int(k) for k in kept[b]]))
    return torch.tensor(out)


def test_ttv_alone_through_the_runner_keeps_the_most_changing_tokens_at_original_visual_indices(llm):
    """Known answer, runner-free: a cache-free staged forward records each transition layer's sublayer
    (input, output); TTV (the paper's formula) summed over the layers so far picks the M~_s largest of
    the tokens still kept, as ORIGINAL visual indices (0..M-1), at each of the three stages. The runner's
    selections must be exactly those (left-padded rows, so the visual span starts at a different row in
    every batch row and the rows of a later stage are not the visual indices)."""
    prompt = make_prompt()
    B, T = prompt["attention_mask"].shape
    vs = prompt["visual_start"]
    config = AccelConfig(pruning=TokenPruningConfig(method="transprune", keep_ratio=0.25, params={"iga_weight": 0.0}))
    runner = AcceleratedRunner(config)
    seen = _spy(runner)
    runner.prefill(llm, **prompt)
    got = [k for _, k in seen]
    assert runner.plan(llm).transition_layers == (0, 1, 2) and [k.shape[1] for k in got] == [14, 11, 4]

    pos = positions_from_mask(prompt["attention_mask"])
    kept, acc, cuts, prev_rows = torch.arange(M).expand(B, M), torch.zeros(B, M), {}, None
    for s, (layer, budget) in enumerate(zip((0, 1, 2), (14, 11, 4))):
        _, rec = staged_reference(llm, prompt["inputs_embeds"], prompt["attention_mask"], pos, cuts, record=(layer,))
        at_prompt = vs[:, None] + kept  # the candidates' prompt indices ...
        slots = at_prompt if prev_rows is None else torch.searchsorted(prev_rows, at_prompt)  # ... their rows
        at = lambda t: t.gather(1, slots[..., None].expand(-1, -1, HIDDEN))  # noqa: E731
        ttv = sum(module_ttv(at(x), at(f)) for x, f in (rec[layer]["attention"], rec[layer]["mlp"]))
        acc = acc.scatter_add(1, kept, ttv)  # accumulated over the transition layers so far
        kept = kept.gather(1, acc.gather(1, kept).topk(budget, dim=-1).indices).sort(dim=-1).values
        assert torch.equal(got[s], kept), f"stage {s}"
        rows = _rows_keeping(T, vs, kept)  # prompt indices kept from layer s + 1 on
        cuts[layer + 1] = rows if prev_rows is None else torch.searchsorted(prev_rows, rows)  # current-row cut
        prev_rows = rows
    assert torch.equal(runner.stats.kept_visual, kept) and int(kept.max()) < M


def test_ttv_prefers_direction_and_magnitude_change_and_is_not_flattened_by_the_normalisation():
    """Hand-made transitions whose order is known: at equal update size, an update that turns the token
    scores higher than one along it; at equal turn, a larger update scores higher; a token that does not
    change at all scores lowest. The combined score (TTV / sum + IGA / sum) keeps that order when IGA is
    uniform, at every iga_weight < 1 -- so neither the normalisation nor the IGA term can flatten TTV."""
    x = torch.tensor([[[1.0, 0.0]] * 5])  # (1, 5, 2): five identical inputs
    # no update, along x, orthogonal, opposite, opposite and 4x longer
    fx = torch.tensor([[[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [-0.5, 0.0], [-2.0, 0.0]]])
    ttv = module_ttv(x, fx)[0]
    assert ttv.argsort().tolist() == [0, 1, 2, 3, 4]
    for weight in (0.0, 0.3, 0.5, 0.9):
        method = build_method("transprune", iga_weight=weight)
        ctx = SelectionContext(visual_embeds=x, visual_attention=torch.full((1, 5), 0.2), budget=2,
                               transition_scores={0: module_ttv(x, fx), 1: module_ttv(x, fx)})  # fmt: skip
        assert method.select(ctx).tolist() == [[3, 4]]
