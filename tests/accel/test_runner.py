import pytest
import torch
from fixtures.tiny_models import HIDDEN, make_llama, make_prompt, reference_logits

import vla_accel.accel.runner as runner_mod
from vla_accel.accel.config import AccelConfig, LayerSkipConfig, TokenPruningConfig
from vla_accel.policies.common.prompt import kept_token_index, positions_from_mask
from vla_accel.policies.llm_runner import HFRunner
from vla_accel.accel.runner import AcceleratedRunner


@pytest.fixture(scope="module")
def llm():
    return make_llama(num_layers=6)


def pruning(method, layer=None, skip=(), **kw):
    budget = {k: kw.pop(k) for k in ("keep_ratio", "keep_tokens") if k in kw} or {"keep_ratio": 0.5}
    return AccelConfig(
        pruning=TokenPruningConfig(method=method, layer=layer, params=kw, **budget),
        layer_skip=LayerSkipConfig(layers=skip) if skip else None,
    )


def decode_tokens(n, batch, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, HIDDEN, generator=g) for _ in range(n)]


def run(runner, llm, prompt, tokens):
    """prefill + decode each token; returns [(logits, hidden)] for prefill then every decode."""
    res = runner.prefill(llm, **prompt)
    out, pos = [(res.logits, res.hidden)], res.next_position[:, None]
    for tok in tokens:
        out.append(runner.decode_one_token(llm, tok, res.cache, pos))
        pos = pos + 1
    runner.end_step()
    return out, res


@pytest.mark.parametrize(
    "config",
    [AccelConfig(), pruning("fastv", keep_ratio=1.0), pruning("vla_pruner")],  # vla_pruner: warm-up step
    ids=["off", "keep_all", "vla_pruner_warmup"],
)
def test_everything_off_equals_hf_runner_exactly(llm, config):
    prompt, tokens = make_prompt(), decode_tokens(3, batch=3)
    ref, ref_res = run(HFRunner(), llm, prompt, tokens)
    got, got_res = run(AcceleratedRunner(config), llm, prompt, tokens)
    assert torch.equal(ref_res.next_position, got_res.next_position)
    for (rl, rh), (gl, gh) in zip(ref, got):
        assert torch.equal(rl, gl) and torch.equal(rh, gh)
    assert not torch.isnan(ref[0][0]).any()
    assert llm.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    "method,layer,skip",
    [("fastv", 2, ()), ("fastv", 3, (1, 4)), ("divprune", 0, ()), ("text_guided", 1, (5,)), ("random", 2, ())],
)
def test_pruned_prefill_and_decode_match_cache_free_recompute(llm, method, layer, skip):
    """Decode with the pruned cache == a full recompute on the pruned sequence at the original positions."""
    prompt, tokens = make_prompt(), decode_tokens(3, batch=3)
    runner = AcceleratedRunner(pruning(method, layer=layer, skip=skip, keep_ratio=0.25))
    got, res = run(runner, llm, prompt, tokens)
    assert runner.stats.pruned and runner.stats.kept_visual.shape == (3, 4)
    B, T = prompt["attention_mask"].shape
    n = len(tokens)
    embeds = torch.cat([prompt["inputs_embeds"], *tokens], dim=1)
    mask = torch.cat([prompt["attention_mask"], torch.ones(B, n, dtype=torch.long)], dim=1)
    pos = torch.cat([positions_from_mask(prompt["attention_mask"]),
                     res.next_position[:, None] + torch.arange(n)], dim=1)  # fmt: skip
    keep_rows = torch.cat([kept_token_index(T, prompt["visual_start"], 16, runner.stats.kept_visual),
                           T + torch.arange(n).expand(B, n)], dim=1)  # fmt: skip
    ref = reference_logits(llm, embeds, mask, pos, prune_layer=layer, keep_rows=keep_rows, skip=skip)
    assert not torch.isnan(ref[:, -1]).any()
    for j, (logits, _) in enumerate(got):  # the prompt's last token, then each decoded token
        torch.testing.assert_close(logits, ref[:, keep_rows.shape[1] - n - 1 + j], atol=2e-5, rtol=1e-4)
    # the pruned layers' caches hold only the kept tokens (+ decoded ones); earlier layers the full prompt
    kv = res.cache.kv
    for i in range(6):
        if i in skip:
            assert not kv.layers[i].is_initialized  # a skipped layer is never entered
        else:
            expect = (T - 16 + 4 if i >= layer else T) + n
            assert kv.layers[i].keys.shape[2] == expect


def test_original_position_ids_are_kept_not_renumbered(llm):
    prompt = make_prompt()
    runner = AcceleratedRunner(pruning("fastv", layer=2, keep_ratio=0.25))
    res = runner.prefill(llm, **prompt)
    B, T = prompt["attention_mask"].shape
    keep_rows = kept_token_index(T, prompt["visual_start"], 16, runner.stats.kept_visual)
    pos = positions_from_mask(prompt["attention_mask"])
    renumbered = positions_from_mask(prompt["attention_mask"].gather(1, keep_rows))
    emb, mask = prompt["inputs_embeds"], prompt["attention_mask"]
    kept_pos = reference_logits(llm, emb, mask, pos, 2, keep_rows)[:, -1]
    torch.testing.assert_close(res.logits, kept_pos, atol=2e-5, rtol=1e-4)
    # renumbering would give a different answer: RoPE positions matter, so the check above has teeth
    wrong = reference_logits(llm, emb, mask, pos, 2, keep_rows, pos_after=renumbered)[:, -1]
    assert not torch.allclose(res.logits, wrong, atol=1e-2)
    assert torch.equal(res.next_position, pos[:, -1] + 1)


def test_score_attention_matches_eager_attention_maps(llm):
    """The side computation equals transformers' eager attention weights at layer K-1 (head-averaged)."""
    eager = make_llama(num_layers=6, attn="eager")
    eager.load_state_dict(llm.state_dict())
    prompt = make_prompt()
    out = eager.model(inputs_embeds=prompt["inputs_embeds"], attention_mask=prompt["attention_mask"],
                      position_ids=positions_from_mask(prompt["attention_mask"]), output_attentions=True)  # fmt: skip
    attn = out.attentions[1].float().mean(1)  # (B, T, T) layer 1 = K-1 for K=2
    vis = prompt["visual_start"][:, None] + torch.arange(16)
    captured = {}
    runner = AcceleratedRunner(pruning("fastv", layer=2, keep_ratio=0.25))
    orig = runner.method.select
    runner.method.select = lambda ctx: captured.__setitem__("last", ctx) or orig(ctx)
    runner.prefill(llm, **prompt)
    expect_last = attn[:, -1].gather(1, vis)  # (B, M) the last query's row
    torch.testing.assert_close(captured["last"].visual_attention, expect_last, atol=1e-5, rtol=1e-4)

    runner = AcceleratedRunner(pruning("vla_pruner", layer=2, keep_ratio=0.25, window=1))
    runner.prefill(llm, **prompt)
    runner.end_step()  # one step of history -> the next prefill prunes
    orig = runner.method.select
    runner.method.select = lambda ctx: captured.__setitem__("all", ctx) or orig(ctx)
    runner.prefill(llm, **prompt)
    real = prompt["attention_mask"].bool()
    per_query = attn.gather(2, vis[:, None, :].expand(-1, attn.shape[1], -1))  # (B, T, M)
    expect_all = (per_query * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    torch.testing.assert_close(captured["all"].visual_attention, expect_all, atol=1e-5, rtol=1e-4)


def test_attention_is_computed_only_at_the_requested_layers(llm, monkeypatch):
    calls = []
    real_fn = runner_mod.query_attention
    monkeypatch.setattr(runner_mod, "query_attention",
                        lambda layer, *a, **kw: calls.append(layer) or real_fn(layer, *a, **kw))  # fmt: skip
    layers = list(llm.model.layers)
    prompt, tokens = make_prompt(), decode_tokens(2, batch=3)
    run(AcceleratedRunner(pruning("fastv", layer=3)), llm, prompt, tokens)
    assert calls == [layers[2]]  # one probe: layer K-1 at prefill; none in decode
    calls.clear()
    runner = AcceleratedRunner(pruning("vla_pruner", layer=3, window=1, action_layer=4))
    run(runner, llm, prompt, tokens)  # warm-up step: only the action layer's prefill query (decodes: own weights)
    assert calls == [layers[4]]
    calls.clear()
    run(runner, llm, prompt, tokens)
    # a pruning step: all 30 queries' scores and the 2 decoded action queries' weights come from the layers'
    # own attention (scored_attention); only the prefill's action query is a side probe
    assert calls == [layers[4]]
    assert runner.stats.attention_probes == [("prefill:own", 2, 30), ("prefill", 4, 1), ("decode:own", 4, 1),
                                             ("decode:own", 4, 1)]  # fmt: skip
    calls.clear()
    run(AcceleratedRunner(pruning("divprune", keep_ratio=0.5)), llm, prompt, tokens)
    assert calls == []


def test_skipped_layers_are_never_entered(llm, monkeypatch):
    entered = []
    def spy(forward, i):
        return lambda *a, **k: entered.append(i) or forward(*a, **k)

    for i, layer in enumerate(llm.model.layers):
        monkeypatch.setattr(layer, "forward", spy(layer.forward, i))
    cfg = AccelConfig(layer_skip=LayerSkipConfig(layers=(1, 4)))
    prompt, tokens = make_prompt(), decode_tokens(1, batch=3)
    got, _ = run(AcceleratedRunner(cfg), llm, prompt, tokens)
    assert entered == [0, 2, 3, 5] * 2
    mask, emb = prompt["attention_mask"], prompt["inputs_embeds"]
    ref = reference_logits(llm, emb, mask, positions_from_mask(mask), skip=(1, 4))[:, -1]
    torch.testing.assert_close(got[0][0], ref, atol=2e-5, rtol=1e-4)


def test_rows_are_pruned_independently(llm):
    """Row 0's selection and outputs do not depend on row 1's content (nor on batching)."""
    prompt = make_prompt(lengths=(30, 26))
    other = make_prompt(lengths=(30, 26), seed=9)
    swapped = {k: v.clone() if torch.is_tensor(v) else v for k, v in prompt.items()}
    swapped["inputs_embeds"][1] = other["inputs_embeds"][1]
    alone = {k: v[:1] if torch.is_tensor(v) else v for k, v in prompt.items()}
    for method in ("fastv", "text_guided", "divprune", "efficientvla_tokens"):
        outs = []
        for p in (prompt, swapped, alone):
            runner = AcceleratedRunner(pruning(method, keep_ratio=0.25))
            res = runner.prefill(llm, **p)
            outs.append((runner.stats.kept_visual[0], res.logits[0]))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][0], outs[2][0]), method
        torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(outs[0][1], outs[2][1], atol=1e-5, rtol=1e-4)


def test_vla_pruner_action_history_warmup_and_reset(llm):
    prompt, tokens = make_prompt(), decode_tokens(6, batch=3)  # OpenVLA-like: 7 action queries per step
    runner = AcceleratedRunner(pruning("vla_pruner", layer=2, keep_ratio=0.25, window=3, action_layer=4))
    history = runner.method._history
    for step in range(5):
        run(runner, llm, prompt, tokens)
        assert runner.stats.pruned == (step >= 3)  # warm-up: the first w = 3 steps run unpruned
        assert len(history) == min(step + 1, 3)
        s_act = history[-1]  # (B, M) this step's action attention
        assert s_act.shape == (3, 16) and (s_act >= 0).all() and (s_act.sum(-1) > 0).all()
        if runner.stats.pruned:  # tokens pruned at this step get no action score
            pruned = torch.ones(3, 16, dtype=torch.bool).scatter_(1, runner.stats.kept_visual, False)
            assert (s_act[pruned] == 0).all() and (s_act[~pruned] > 0).all()
        else:
            assert (s_act > 0).all()
    runner.reset()
    assert len(history) == 0
    run(runner, llm, prompt, tokens)
    assert not runner.stats.pruned


def test_prefill_only_policy_captures_the_last_query(llm):
    """CogACT-style: no decode; the cognition (last) query's attention is the step's action attention."""
    prompt = make_prompt()
    runner = AcceleratedRunner(pruning("vla_pruner", layer=2, window=1, action_layer=3))
    runner.prefill(llm, **prompt)
    runner.end_step()
    assert len(runner.method._history) == 1 and runner.stats.attention_probes == [("prefill", 3, 1)]
    runner.prefill(llm, **prompt)
    assert runner.stats.pruned


def test_bad_prompt_inputs_raise(llm):
    prompt = make_prompt()
    bad = dict(prompt, num_visual=40)
    with pytest.raises(ValueError, match="do not fit"):
        AcceleratedRunner().prefill(llm, **bad)
    with pytest.raises(ValueError, match="beyond the model's 6 layers"):
        AcceleratedRunner(pruning("fastv", layer=6)).prefill(llm, **prompt)
    with pytest.raises(ValueError, match="exceeds the 16 visual tokens"):
        AcceleratedRunner(pruning("fastv", keep_tokens=17)).prefill(llm, **prompt)


def _pruned_mask(runner):
    return torch.ones(3, 16, dtype=torch.bool).scatter_(1, runner.stats.kept_visual, False)


@pytest.mark.parametrize("action_layer", [None, 0, 1, 2, 4])
def test_tokens_pruned_at_a_step_have_exactly_zero_action_score(llm, action_layer):
    """K = 3 in a 6-layer Llama: an action layer before K still sees every token, but VLA-Pruner's rule is
    that a token pruned at step t has no action score for t: the history holds exactly 0 there."""
    kw = {} if action_layer is None else {"action_layer": action_layer}
    runner = AcceleratedRunner(pruning("vla_pruner", layer=3, keep_ratio=0.25, window=1, **kw))
    assert runner.plan(llm).action_layer == (3 if action_layer is None else action_layer)  # default >= K
    prompt, tokens = make_prompt(), decode_tokens(6, batch=3)
    run(runner, llm, prompt, tokens)  # warm-up step
    for _ in range(2):
        run(runner, llm, prompt, tokens)
        assert runner.stats.pruned
        s_act, pruned = runner.method._history[-1], _pruned_mask(runner)
        assert (s_act[pruned] == 0).all() and (s_act[~pruned] > 0).all()


def test_default_action_layer_is_never_before_k():
    from vla_accel.accel.config import resolve_plan

    for n_layers, k, skip, want in [(32, 2, (), 15), (6, 3, (), 3), (6, 2, (), 2), (4, 3, (), 3), (2, 1, (), 1),
                                    (8, 5, (7,), 5), (4, 1, (3,), 1), (8, 6, (7,), 6)]:
        cfg = pruning("vla_pruner", layer=k, skip=skip)
        plan = resolve_plan(cfg, n_layers)
        assert plan.action_layer == want and plan.action_layer >= k and plan.action_layer in plan.executed


@pytest.mark.parametrize("sizes", [(1, 1, 3, 3), (3, 3, 1)])
def test_batch_size_change_within_an_episode_is_a_clear_error(llm, sizes):
    """Before: 1,1,3,3 silently broadcast row 0's history into rows 1-2; 3,3,1 crashed in scatter_."""
    runner = AcceleratedRunner(pruning("vla_pruner", layer=2, keep_ratio=0.25, window=3, action_layer=4))
    prompts = {1: make_prompt(lengths=(30,)), 3: make_prompt()}
    with pytest.raises(ValueError, match=r"batch size changed from \d to \d within an episode; call reset\(\)"):
        for b in sizes:
            run(runner, llm, prompts[b], decode_tokens(2, batch=b))
    runner.reset()  # a new episode may use any batch size
    run(runner, llm, prompts[sizes[-1]], decode_tokens(2, batch=sizes[-1]))


def test_observe_step_checks_the_batch_size_against_every_stored_step():
    from vla_accel.accel.pruning import build_method

    m = build_method("vla_pruner", window=3)
    m.observe_step(torch.rand(1, 8))
    m.observe_step(torch.rand(1, 8))
    with pytest.raises(ValueError, match="batch size changed from 1 to 3"):
        m.observe_step(torch.rand(3, 8))
    with pytest.raises(ValueError, match="batch size changed from 1 to 3"):
        m.wants_to_prune(3)  # during warm-up too
    assert not m.wants_to_prune(1)
