import json

import pytest
from fixtures.fakes import compose_config

from vla_accel.tools.bench import bench


def _bench_cfg(*overrides):
    return compose_config("bench", ["policy=openvla_tiny", "env.image_size=16", "bench.progress=false",
                                    "bench.rounds=2", "bench.warmup_rounds=3", "bench.n_episodes=1", *overrides])


VLA_4_LAYERS = "policy.model.llm.num_layers=4"  # room for a pruning layer (3) and a later layer


def test_bench_writes_a_table_with_the_expected_rows(fake_envs, tmp_path):
    cfg = _bench_cfg(VLA_4_LAYERS, "bench.methods=[vla_pruner,fastv,vla_cache]", "bench.keep_ratios=[0.25]",
                     "bench.skip_layers=[[2]]", "bench.rounds=1")
    report = bench(cfg, tmp_path)
    names = [r["name"] for r in report["results"]]
    assert names == ["none", "vla_pruner@0.25", "fastv@0.25", "vla_cache", "skip[2]"]
    by = {r["name"]: r for r in report["results"]}
    assert all(r["n_calls"] == 1 for r in report["results"])
    base = by["none"]
    assert base["speedup"] == 1.0 == base["paired_speedup"] and base["flops_ratio"] == 1.0 and base["tokens_kept"] == {"mean": 16, "of": 16}
    assert set(base["latency_ms"]) == {"vision", "prefill", "decode", "total"}  # no pruning: no select
    select = by["vla_pruner@0.25"]["latency_ms"]["select"]["p50"]
    assert 0 < select <= by["vla_pruner@0.25"]["latency_ms"]["prefill"]["p50"] + \
        by["vla_pruner@0.25"]["latency_ms"]["decode"]["p50"]
    # after 3 warm-up rounds VLA-Pruner prunes: 16 * 0.25 = 4 visual tokens kept, fewer FLOPs
    assert by["vla_pruner@0.25"]["tokens_kept"]["mean"] == 4 and by["fastv@0.25"]["tokens_kept"]["mean"] == 4
    assert by["fastv@0.25"]["flops_ratio"] < 1.0 and by["vla_cache"]["tokens_kept"]["of"] == 16
    assert by["skip[2]"]["prefill_flops_ratio"] == pytest.approx(0.75) and by["skip[2]"]["skip_layers"] == [2]  # 3 of 4 equal layers run
    r = by["fastv@0.25"]
    assert r["ideal_speedup"] == pytest.approx(1 / r["flops_ratio"])
    assert r["achieved_over_ideal"] == pytest.approx(r["speedup"] / r["ideal_speedup"])
    assert r["speedup"] == pytest.approx(base["latency_ms"]["total"]["p50"] / r["latency_ms"]["total"]["p50"])
    prefill_speedup = base["latency_ms"]["prefill"]["p50"] / r["latency_ms"]["prefill"]["p50"]
    assert r["prefill_achieved_over_ideal"] == pytest.approx(prefill_speedup * r["prefill_flops_ratio"])
    assert base["prefill_achieved_over_ideal"] == pytest.approx(1.0)

    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(report["results"]))
    assert on_disk["machine"]["torch_threads"] >= 1 and on_disk["n_calls_per_config"] == 1
    md = (tmp_path / "bench.md").read_text()
    assert md.count("\n| ") == 1 + len(names)  # header + one row per config
    assert "| fastv@0.25 | 4/16 |" in md and "date:" in md and "command:" in md
    assert "| prefill | select | decode |" in md and "part of prefill and decode" in md
    assert "| none | 16/16 |" in md and md.split("| none | 16/16 | ")[1].split(" | ")[2] == "-"  # no select


def test_bench_of_a_cogact_policy_times_the_action_head(fake_envs, tmp_path):
    cfg = _bench_cfg("policy=cogact_tiny", VLA_4_LAYERS, "bench.methods=[fastv]", "bench.keep_ratios=[0.5]",
                     "bench.head_cache_intervals=[5]", "bench.warmup_rounds=1", "bench.rounds=1")
    report = bench(cfg, tmp_path)
    by = {r["name"]: r for r in report["results"]}
    assert list(by) == ["none", "fastv@0.5", "head_cache/5"]
    assert "action_head" in by["none"]["latency_ms"] and "decode" not in by["none"]["latency_ms"]
    head = by["head_cache/5"]["flops_per_call"]["action_head"] / by["none"]["flops_per_call"]["action_head"]
    assert head == pytest.approx(0.2)  # 10 DDIM steps, 2 of them recompute
    assert "action_head ms" in (tmp_path / "bench.md").read_text().replace("| action_head |", "action_head ms")


def test_bench_prune_layer_sets_k_for_every_pruning_method(fake_envs, tmp_path):
    """The presets' K=2 (fastv, vla_pruner) does not fit a 2-layer Llama; bench.prune_layer=1 does."""
    from vla_accel.tools.bench import bench_configs

    cfg = _bench_cfg("bench.methods=[vla_pruner,fastv]", "bench.keep_ratios=[0.5]", "bench.prune_layer=1")
    rows = bench_configs(cfg, policy=None)
    assert [r.accel.pruning.prune_layer for r in rows[1:]] == [1, 1]
    report = bench(cfg, tmp_path)  # openvla_tiny has 2 layers: runs, and prunes at layer 1
    assert report["results"][1]["tokens_kept"]["mean"] == 8
    with pytest.raises(ValueError, match="beyond the model's 2 layers"):
        bench(_bench_cfg("bench.methods=[fastv]", "bench.keep_ratios=[0.5]"), tmp_path / "k3")


@pytest.mark.parametrize("override, match", [
    ("bench.rounds=0", "bench.rounds"), ("bench.keep_ratios=[0]", "keep_ratios"),
    ("bench.threads=0", "bench.threads"), ("policy=expert", "VLA policy"),
    (VLA_4_LAYERS + " bench.methods=[fastvv]", "Did you mean 'fastv'"),
])
def test_bad_bench_config_is_a_clear_value_error(fake_envs, tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        bench(_bench_cfg(*override.split()), tmp_path)
