import pytest

from vla_accel.accel.config import AccelConfig, LayerSkipConfig, TokenPruningConfig
from vla_accel.accel.flops import (
    LLMShape, accelerated_prefill_flops, decode_flops, layer_flops, projector_flops, prefill_flops,
    pruning_flops_ratio, vit_flops,
)  # fmt: skip

LLAMA7B = LLMShape(num_layers=32, hidden=4096, mlp=11008)


def test_layer_formula_by_hand():
    assert layer_flops(2, 3, 5) == 4 * 2 * 9 + 2 * 4 * 3 + 3 * 2 * 3 * 5


def test_paper_ratio_equals_our_layer_sum_with_shifted_k():
    n, n_kept = 256 + 30, 64 + 30
    for k_paper in (2, 3, 4):
        ours = prefill_flops(LLAMA7B, n, n_kept, prune_layer=k_paper - 1) / prefill_flops(LLAMA7B, n)
        assert pruning_flops_ratio(32, k_paper, n, n_kept, 4096, 11008) == pytest.approx(ours, rel=1e-12)
    assert pruning_flops_ratio(32, 1, n, n, 4096, 11008) == pytest.approx(1.0)


def test_skipped_layers_cost_nothing_and_decode_grows_with_cache():
    full = prefill_flops(LLAMA7B, 100)
    assert prefill_flops(LLAMA7B, 100, skip_layers=range(4)) == pytest.approx(full * 28 / 32)
    d0, d5 = decode_flops(LLAMA7B, 100), decode_flops(LLAMA7B, 100, step=5)
    assert d5 - d0 == 32 * 2 * 5 * 4096
    assert decode_flops(LLAMA7B, 100, n_kept=50, prune_layer=3) < d0
    with pytest.raises(ValueError):
        prefill_flops(LLAMA7B, 100, skip_layers=[32])


def test_accelerated_prefill_summary():
    cfg = AccelConfig(TokenPruningConfig("fastv", keep_ratio=0.25, layer=3), LayerSkipConfig(layers=(30, 31)))
    out = accelerated_prefill_flops(LLAMA7B, cfg, n=286, num_visual=256)
    expect = prefill_flops(LLAMA7B, 286, 286 - 256 + 64, 3, skip_layers=(30, 31))
    assert out["accelerated"] == expect and out["tokens_kept"] == 64 and 0 < out["ratio"] < 0.4
    assert "4*n*d^2" in out["formula"]


def test_vision_and_projector():
    assert vit_flops(1, 2, 3, 5) == 4 * 2 * 9 + 2 * 4 * 3 + 2 * 2 * 3 * 5
    assert projector_flops(10, (8, 16, 4)) == 10 * 8 * 16 + 10 * 16 * 4


def test_presets_prune_where_their_papers_do():
    """TokenPruningConfig's convention: prune_layer = the number of layers that see every token.
    VLA-Pruner's K=3 (K-1 full layers in its ratio) -> 2; FastV "after layer 2" -> 2; DivPrune before the LLM."""
    from vla_accel.accel.config import load_accel_config

    layers = {name: load_accel_config(name).pruning.prune_layer for name in ("vla_pruner", "fastv", "divprune")}
    assert layers == {"vla_pruner": 2, "fastv": 2, "divprune": 0}
    n, n_kept = 256 + 30, 128 + 30
    cfg = load_accel_config("vla_pruner")  # keep 0.5
    ours = accelerated_prefill_flops(LLAMA7B, cfg, n, 256)
    assert ours["tokens_kept"] == 128
    assert ours["ratio"] == pytest.approx(pruning_flops_ratio(32, 3, n, n_kept, 4096, 11008), rel=1e-12)
