"""The seed papers' pruners on synthetic inputs whose right answer is known (FasterVLM, VTC-CLS, ToDRE,
FEATHER, HiPrune), and each preset through accelerate() on the tiny policies."""

import math

import numpy as np
import pytest
import torch
from fixtures.tiny_models import obs, tiny_cogact, tiny_openvla

from vla_accel.accel.accelerate import accelerate
from vla_accel.accel.call_accounting import call_accounting
from vla_accel.accel.config import load_accel_config, resolve_plan
from vla_accel.accel.pruning import SelectionContext, build_method
from vla_accel.accel.pruning.feather import strided_grid
from vla_accel.accel.pruning.hiprune import neighbours

NEW_PRESETS = ["fastervlm", "vtc_cls", "todre", "feather", "hiprune"]


def ctx(M=16, budget=4, D=8, seed=0, **kw):
    embeds = torch.randn(2, M, D, generator=torch.Generator().manual_seed(seed))
    kw.setdefault("visual_attention", None)
    return SelectionContext(visual_embeds=embeds, budget=budget, grid=(1, int(M**0.5), int(M**0.5)), **kw)


def test_fastervlm_keeps_the_top_cls_attention_tokens():
    cls_map = torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
    cls_map[0, [2, 7, 11, 13]] += 5.0
    cls_map[1, [0, 1, 14, 15]] += 5.0
    m = build_method("fastervlm")
    assert m.default_layer == 0 and m.encoder_attention_probe().kind == "cls"
    kept = m.select(ctx(encoder_attention={-1: cls_map}))
    assert kept.tolist() == [[2, 7, 11, 13], [0, 1, 14, 15]]


def test_vtc_cls_ranks_by_the_sum_over_the_ensemble_layers():
    # token 3 is the single best of the last layer, but tokens 5 and 9 win summed over the four layers
    maps = {k: torch.zeros(1, 16) for k in (-4, -3, -2, -1)}
    maps[-1][0, 3] = 1.0
    for k in (-4, -3, -2, -1):
        maps[k][0, 5] += 0.4
        maps[k][0, 9] += 0.3
    m = build_method("vtc_cls")
    assert m.encoder_attention_probe().layers == (-4, -3, -2, -1) and m.encoder_attention_probe().clip
    assert m.select(ctx(budget=2, encoder_attention=maps))[0].tolist() == [5, 9]
    only_last = build_method("fastervlm").select(ctx(budget=1, encoder_attention=maps))
    assert only_last[0].tolist() == [3]


def test_todre_stage_one_is_k_center_and_stage_two_keeps_the_task_relevant_subset():
    # 4 tight clusters of 4 directions: a 4-center pick takes one from each cluster
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 8) * 5
    embeds = (centres.repeat_interleave(4, 0) + 0.01 * torch.randn(16, 8, generator=g))[None]
    m = build_method("todre")
    first = m.select(SelectionContext(embeds, None, 4))
    assert sorted(k // 4 for k in first[0].tolist()) == [0, 1, 2, 3]
    # stage 2 ranks the stage-1 tokens by the text queries' attention and answers in original indices
    cand = torch.tensor([[1, 6, 8, 15]])
    attn = torch.tensor([[0.1, 0.5, 0.05, 0.3]])
    second = m.select(SelectionContext(embeds, attn, 2, stage=1, candidates=cand))
    assert second.tolist() == [[6, 15]]
    assert m.stage_queries(0) is None and m.stage_queries(1) == "text"
    assert m.stage_layers(None, 32) == (0, 16) and m.stage_budgets(256, 13) == (26, 13)


def test_feather_always_keeps_the_uniform_grid_then_the_best_scored():
    grid = strided_grid((1, 16, 16), 3)
    assert grid.numel() == 36 and grid[:7].tolist() == [0, 3, 6, 9, 12, 15, 48]  # rows 0, 3, ..., 15
    m = build_method("feather")
    # the paper's setting: 256 tokens, r = 0.3 -> 76 by attention + the 36-token grid, then 0.09 * 256 = 23
    assert m.stage_budgets(256, 23) == (76 + 36, 23)
    assert m.stage_layers(None, 32) == (8, 16) and m.stage_layers(None, 4) == (1, 2)
    assert not m.score_rope and build_method("feather", rope_free=False).score_rope
    # bottom-heavy attention (what RoPE does to FastV): the grid still covers the top rows
    attn = torch.linspace(0, 1, 16).expand(2, 16).clone()  # 4x4 grid, the bottom row scores highest
    kept = m.select(ctx(budget=6, visual_attention=attn))
    assert kept[0].tolist() == [0, 3, 12, 13, 14, 15]  # the grid (0, 3, 12, 15) + the 2 best others
    cand = kept
    second = m.select(ctx(budget=2, visual_attention=attn.gather(1, cand), stage=1, candidates=cand))
    assert second[0].tolist() == [14, 15]


def test_hiprune_anchor_buffers_then_registers():
    assert sorted(neighbours(5, 4, 4)) == [1, 4, 6, 9] and sorted(neighbours(16, 4, 4)) == [17, 20]  # camera 2
    obj = torch.zeros(1, 16)
    obj[0, 5] = 1.0  # the object-layer peak
    deep = torch.zeros(1, 16)
    deep[0, [0, 15, 10]] = torch.tensor([0.9, 0.8, 0.1])
    m = build_method("hiprune", alpha=0.5)  # budget 8: 4 anchors + buffers, 4 registers
    probe = m.encoder_attention_probe()
    assert probe.kind == "received" and probe.layers == (-1,) and probe.relative == (9 / 24,)
    kept = m.select(ctx(budget=8, encoder_attention={9 / 24: obj.repeat(2, 1), -1: deep.repeat(2, 1)}))[0].tolist()
    # anchor 5 + 3 of its neighbours (up 1, down 9, left 4), then the deep layer's best: 0, 15, 10 and one more
    assert {5, 1, 9, 4} <= set(kept) and {0, 15, 10} <= set(kept) and len(kept) == 8 and 6 not in kept


@pytest.mark.parametrize("name", NEW_PRESETS)
@pytest.mark.parametrize("make", [tiny_openvla, tiny_cogact], ids=["openvla", "cogact"])
def test_each_preset_runs_on_the_tiny_policies_and_counts_its_stages(make, name):
    policy = make()
    accelerate(policy, name, keep_ratio=0.25)
    out = policy.predict_action_chunk(obs(batch=2))
    stats, M = policy.runner.stats, policy.config.num_visual_tokens
    assert np.isfinite(out).all() and stats.pruned and stats.kept_visual.shape == (2, round(M * 0.25))
    plan = resolve_plan(policy.accel_config, policy.language_model.config.num_hidden_layers)
    assert [k for k, _ in stats.stage_tokens] == list(plan.stage_layers)
    acc = call_accounting(policy)
    assert acc["tokens_kept"] == round(M * 0.25) and policy.last_timing["select"] > 0
    assert policy.runner.call_stats()["keep_ratio"] == 0.25
    accelerate(policy, "none")
    base = policy.predict_action_chunk(obs(batch=2))
    assert base.shape == out.shape and call_accounting(policy)["flops"]["prefill"] > acc["flops"]["prefill"]


def test_cls_methods_refuse_an_encoder_without_a_class_token_at_accelerate_time():
    from fixtures.tiny_models import model_dict

    from vla_accel.policies.openvla.configuration_openvla import OpenVLAConfig
    from vla_accel.policies.openvla.modeling_openvla import OpenVLAPolicy

    d = model_dict("openvla_tiny")
    d["vision"][0]["class_token"] = False
    policy = OpenVLAPolicy.from_config(OpenVLAConfig.from_dict(d)).eval()
    before = policy.runner
    for name in ("fastervlm", "vtc_cls"):
        with pytest.raises(ValueError, match=r"OpenVLAPolicy.*config.vision\[0\].*class_token=False"):
            accelerate(policy, name)
    assert policy.runner is before
    accelerate(policy, "hiprune", keep_ratio=0.5)  # "received" attention needs no class token
    assert np.isfinite(policy.predict_action_chunk(obs())).all() and policy.runner.stats.pruned
    with pytest.raises(ValueError, match="do not run"):  # the tiny encoder runs blocks 0..1
        accelerate(tiny_openvla(), "fastervlm", params={"encoder_layer": 5})


def test_flops_of_a_two_stage_plan_count_each_stage():
    from vla_accel.accel.flops import LLMShape, accelerated_prefill_flops, layer_flops

    shape = LLMShape(32, 4096, 11008)
    cfg = load_accel_config("feather")  # stages at 8 and 16 of 32: 112 then 23 of 256 visual tokens
    got = accelerated_prefill_flops(shape, cfg, n=300, num_visual=256)
    n1, n2 = 300 - 256 + 112, 300 - 256 + 23
    want = 8 * layer_flops(300, 4096, 11008) + 8 * layer_flops(n1, 4096, 11008) + 16 * layer_flops(n2, 4096, 11008)
    assert got["accelerated"] == want and got["tokens_kept"] == 23
    assert math.isclose(got["ratio"], want / (32 * layer_flops(300, 4096, 11008)))
