"""scripts/gpu_check.py: its plumbing on the tiny shape on CPU in float32 (where every check is exact or at
the CPU tests' tolerance), the OpenVLA-7B shape's construction on the meta device, and the clear error when
CUDA is asked for but absent. The GPU run itself needs a CUDA machine (`python scripts/gpu_check.py`)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
CONFIGS = ["none"] + [f"{m}@{r:g}" for m in ("vla_pruner", "fastv") for r in (0.5, 0.25, 0.125)]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(gpu_check, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    args = ["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--rounds", "2", "--warmup", "3",
            "--out", str(out)]
    assert gpu_check.main(args) == 0
    return json.loads(out.read_text())


def test_every_correctness_check_passes_on_cpu_float32(report):
    c = report["correctness"]
    assert c["dtype"] == "float32" and c["all_passed"]
    checks = c["checks"]
    assert {k for k in checks if k.startswith("runner_")} == {"runner_off_equals_hf", "runner_keep_all_equals_hf",
                                                              "runner_vla_pruner_warmup_equals_hf"}
    assert {"policy_openvla_none_equals_plain", "policy_cogact_none_equals_plain"} <= set(checks)
    assert sum(k.startswith("pruned_") for k in checks) == 3
    for name, check in checks.items():
        assert check["passed"] and "error" not in check, name
        if name.startswith(("runner_", "policy_")):
            assert check["max_abs_diff"] == 0.0, name  # identical, not merely close
        else:
            assert 0 <= check["max_abs_diff"] < 1e-4 and check["pruned"] and check["cache_ok"] is True, name
            assert check["ref_rounding_error"] == 0.0  # float32: the reference is its own float32 reference
            assert check["kept_visual"] == check["of"] // 2


def test_the_report_has_every_field_and_config(report):
    assert {"device", "torch", "transformers", "date", "command", "correctness", "latency", "wall_s"} <= set(report)
    assert "--shape tiny" in report["command"]
    lat = report["latency"]
    assert lat["rounds"] == 2 and lat["warmup_rounds"] == 3
    assert lat["shape"]["num_visual_tokens"] == 16 and lat["shape"]["action_tokens"] == 7
    rows = {r["name"]: r for r in lat["configs"]}
    assert list(rows) == CONFIGS
    for name, r in rows.items():
        assert r["n_calls"] == 2 and r["peak_mem_gb"] is None  # no CUDA: no memory figure
        assert {"vision", "prefill", "decode", "total"} <= set(r["p50_ms"]) and set(r["p90_ms"]) == set(r["p50_ms"])
        assert all(v > 0 for v in r["p50_ms"].values()) and r["speedup"] > 0
        assert ("select" in r["p50_ms"]) == (name != "none")  # the pruning method's own time
    assert rows["none"]["speedup"] == 1.0 and rows["none"]["flops_ratio"] == 1.0
    for m in ("vla_pruner", "fastv"):  # after >= 3 warm-up rounds even VLA-Pruner prunes every timed call
        kept = [rows[f"{m}@{r:g}"]["tokens_kept"] for r in (0.5, 0.25, 0.125)]
        assert kept == [8, 4, 2]
        ratios = [rows[f"{m}@{r:g}"]["flops_ratio"] for r in (0.5, 0.25, 0.125)]
        assert 1 > ratios[0] > ratios[1] > ratios[2] > 0


def test_the_7b_shape_is_openvla_7b(gpu_check):
    """Built on the meta device: the shape without the 15 GB."""
    policy = gpu_check.build_policy(gpu_check.SHAPES["7b"], torch.device("meta"), torch.bfloat16)
    info = gpu_check.shape_info(policy)
    assert (info["llm_layers"], info["hidden"], info["heads"], info["intermediate"], info["vocab"]) == \
        (32, 4096, 32, 11008, 32064)
    assert info["num_visual_tokens"] == 256 and info["attn"] == "sdpa" and info["dtype"] == "bfloat16"
    assert 7.4 < info["params_b"] < 7.6  # OpenVLA-7B: 7.54 B
    assert torch.get_default_dtype() == torch.float32  # building_on restored it


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error(gpu_check, tmp_path):
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--device", "cuda", "--out", str(out)])
    assert "needs a CUDA GPU" in str(e.value.code) and "--device cpu" in str(e.value.code)
    assert not out.exists()
