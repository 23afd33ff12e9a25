"""The score layer's own attention (scored_attention) gives VLA-Pruner exactly the side probe's scores."""

from contextlib import contextmanager

import pytest
import torch
from fixtures.tiny_models import HIDDEN, make_llama, make_prompt

import vla_accel.accel.runner as runner_mod
from vla_accel.accel.config import AccelConfig, TokenPruningConfig
from vla_accel.accel.runner import AcceleratedRunner
from vla_accel.accel.scored_attention import ScoreRequest, scored_call


@contextmanager
def _unrouted(attn_module, request):
    yield {}  # the layer runs as the model's own (SDPA), the request stays unfilled


def _vla_pruner(**params):
    return AccelConfig(pruning=TokenPruningConfig(method="vla_pruner", layer=3, keep_ratio=0.25,
                                                  params={"window": 1, **params}))  # fmt: skip


def _two_steps(llm, prompt, side_probe: bool, monkeypatch):
    """Two control steps of prefill + 3 decodes (the first fills the one-step history, the second prunes):
    the second's semantic scores, kept tokens, action attention (history), logits and probe log."""
    if side_probe:  # the path before the change: no layer keeps its weights, every map is a side probe
        monkeypatch.setattr(runner_mod, "_scored", _unrouted)
    runner = AcceleratedRunner(_vla_pruner())
    captured = {}
    for step in range(2):
        if step == 1:
            orig = runner.method.select
            runner.method.select = lambda ctx: captured.setdefault("scores", ctx.visual_attention) is None or orig(ctx)
        res = runner.prefill(llm, **prompt)
        pos = res.next_position[:, None]
        for tok in decode_tokens(3, batch=prompt["inputs_embeds"].shape[0], dtype=prompt["inputs_embeds"].dtype):
            logits, _ = runner.decode_one_token(llm, tok, res.cache, pos)
            pos = pos + 1
        probes = list(runner.stats.attention_probes)
        runner.end_step()
    monkeypatch.undo()
    return captured["scores"], runner.stats.kept_visual, list(runner.method._history), logits, probes


def decode_tokens(n, batch, dtype):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(batch, 1, HIDDEN, generator=g).to(dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lengths", [(30, 26, 28), (30, 30, 30)])
def test_scores_history_kept_tokens_and_outputs_equal_the_side_probe_bit_for_bit(dtype, lengths, monkeypatch):
    """Left-padded rows (padding queries and keys masked), and rows without padding, where every row of
    the score layer is a query and the scores skip the query gather (runner._prompt_scores)."""
    llm = make_llama(num_layers=6).to(dtype)
    prompt = make_prompt(lengths=lengths)
    prompt["inputs_embeds"] = prompt["inputs_embeds"].to(dtype)
    s_side, k_side, h_side, logits_side, probes_side = _two_steps(llm, prompt, True, monkeypatch)
    s_own, k_own, h_own, logits_own, probes_own = _two_steps(llm, prompt, False, monkeypatch)
    assert torch.equal(s_own, s_side) and torch.equal(k_own, k_side)
    # the layers' outputs are their own attention function's, so everything downstream is equal too
    assert len(h_own) == len(h_side) == 1 and torch.equal(h_own[0], h_side[0])
    # the score layer 2 (K = 3) and the action layer 3 (prefill's last query + 3 decodes) read their own weights
    assert probes_side == [("prefill", 2, 30)] + [("prefill", 3, 1)] + [("decode", 3, 1)] * 3
    assert probes_own == [("prefill:own", 2, 30)] + [("prefill", 3, 1)] + [("decode:own", 3, 1)] * 3
    assert torch.equal(logits_own, logits_side)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_action_captures_equal_the_side_probe_on_the_same_inputs(dtype, monkeypatch):
    pairs = []
    orig = AcceleratedRunner._capture

    def both(self, *args, own=None, **kw):  # the side probe and the layer's own weights, same call
        orig(self, *args, own=None, **kw)
        side = self._step_action_attention.pop()
        orig(self, *args, own=own, **kw)
        pairs.append((side, self._step_action_attention[-1], own is not None))

    monkeypatch.setattr(AcceleratedRunner, "_capture", both)
    llm = make_llama(num_layers=6).to(dtype)
    prompt = make_prompt(lengths=(30, 26, 28))
    prompt["inputs_embeds"] = prompt["inputs_embeds"].to(dtype)
    runner = AcceleratedRunner(_vla_pruner(action_layer=1))  # before K = 3: it still sees every token
    for _ in range(2):
        res = runner.prefill(llm, **prompt)
        pos = res.next_position[:, None]
        for tok in decode_tokens(3, batch=3, dtype=dtype):
            runner.decode_one_token(llm, tok, res.cache, pos)
            pos = pos + 1
        runner.end_step()
    # the prefill's last query is a side probe (an S-row product's last row may round differently from a
    # 1-row one), the decoded queries read their own weights, at warm-up and pruned steps alike
    assert [own for _, _, own in pairs] == [False] + [True] * 3 + [False] + [True] * 3
    for side, own, _ in pairs:
        assert torch.equal(side, own)


def test_the_scored_call_routes_one_module_once_and_restores_it():
    llm = make_llama(num_layers=2)
    shared = llm.config
    attn = llm.model.layers[0].self_attn
    with scored_call(attn):
        assert attn.config._attn_implementation == "vla_accel_scored"
        assert llm.model.layers[1].self_attn.config is shared and shared._attn_implementation == "sdpa"
    assert attn.config is shared


def test_the_scored_call_outputs_exactly_the_modules_own_attention_and_its_weights_are_a_distribution():
    llm = make_llama(num_layers=1)
    layer = llm.model.layers[0]
    x = torch.randn(2, 12, llm.config.hidden_size)
    pos = torch.arange(12).expand(2, 12)
    pos_emb = llm.model.rotary_emb(x, pos)
    causal = torch.ones(12, 12, dtype=torch.bool).tril().expand(2, 12, 12)
    ref, _ = layer.self_attn(x, position_embeddings=pos_emb, attention_mask=causal[:, None])
    request = ScoreRequest(causal)
    with scored_call(layer.self_attn, request):
        got, _ = layer.self_attn(x, position_embeddings=pos_emb, attention_mask=causal[:, None], score_request=request)
    assert torch.equal(got, ref)
    assert request.head_mean.shape == (2, 12, 12)
    torch.testing.assert_close(request.head_mean.sum(-1), torch.ones(2, 12))
    assert (request.head_mean.triu(1) == 0).all()  # causal: no weight on a later key


def test_a_few_queries_keep_the_side_probe():
    """FastV reads one query: scoring every row would cost more than the one-row probe."""
    llm = make_llama(num_layers=6)
    runner = AcceleratedRunner(AccelConfig(pruning=TokenPruningConfig(method="fastv", layer=3, keep_ratio=0.25)))
    runner.prefill(llm, **make_prompt())
    assert runner.stats.attention_probes == [("prefill", 2, 1)]


def test_the_scored_copy_follows_a_change_of_the_models_attention_implementation():
    llm = make_llama(num_layers=1)
    attn = llm.model.layers[0].self_attn
    for implementation in ("sdpa", "eager", "sdpa"):
        llm.config._attn_implementation = implementation
        request = ScoreRequest(torch.ones(1, 4, 4, dtype=torch.bool).tril())
        with scored_call(attn, request):
            assert attn.config._attn_implementation == "vla_accel_scored"
        assert request.implementation == implementation and attn.config is llm.config
