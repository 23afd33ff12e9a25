"""One self-contained check for a CUDA machine: correctness on CUDA in bf16, then the latency of an
OpenVLA-7B-shaped policy under each pruning config. Writes ONE JSON file and prints a table.

    python scripts/gpu_check.py --out gpu_check.json           # one CUDA GPU (H200: ~1-3 min, estimated)
    python scripts/gpu_check.py --shape tiny --device cpu --dtype float32 --rounds 2 --warmup 3 --out x.json

Needs the package installed (`pip install -e .`: `vla_accel.policies` is the repository's policies/ dir)
and downloads nothing: every model has random weights.

1. Correctness, on the tiny models of tests/fixtures/tiny_models.py moved to --device / --dtype. The CPU
   tests (tests/accel/test_runner.py, test_accelerate.py) check the same in float32; CUDA kernels and
   bf16 are what they cannot reach.
   (a) runner_*: AcceleratedRunner with every part off (also FastV keeping every token, and VLA-Pruner's
       unpruned warm-up step) == HFRunner, prefill + 3 decode steps, logits and hidden states, torch.equal.
   (b) policy_*: the tiny OpenVLA- and CogACT-style policies give the same actions plain (HFRunner) and
       accelerated with "none" (np.array_equal, 3 consecutive batched observations).
   (c) pruned_*: FastV / VLA-Pruner at layer K, keep 0.5: the prefill logits and 3 decode steps match the
       runner-free reference forward (`reference_logits`: pruning by plain indexing at layer K) on the same
       kept tokens, within the tolerance of `_tolerance_check` (float32: the CPU tests' 2e-5 + 1e-4 |ref|;
       bf16: twice the reference's own bf16 rounding error on top); the KV cache of layers >= K holds only
       the kept tokens.
2. Latency: a random-weight OpenVLA-style policy (`policy_class("openvla").from_config`) of OpenVLA-7B's
   shape -- DINOv2 ViT-L/14 (4 registers) + SigLIP So400m/14 fused at 224 px (256 visual tokens), the
   fused 3-layer projector, Llama-2-7B (32 x 4096, 32 heads, MLP 11008, vocab 32064), SDPA, batch 1,
   OpenVLA's prompt with a 20-word instruction, 7 greedy action tokens. Built on the GPU in the dtype
   directly (no 30 GB host copy). Configs: plain, VLA-Pruner and FastV at each --keep-ratios, each a
   `fork_episode()` view of the one model (weights shared, its own runner state). Rounds interleaved
   round-robin, order rotated each round; the first --warmup rounds are not timed (>= 3: VLA-Pruner's
   history). Latency = the policy's own stage timer (`last_timing`, CUDA-synchronised at every stage
   boundary); "select" (the pruning method's own work) is INSIDE prefill / decode, not added to them.
   speedup = p50 total(none) / p50 total(config); flops_ratio = analytic prefill FLOPs ratio
   (vla_accel.accel.flops.accelerated_prefill_flops); peak_mem_gb = max over the config's timed calls of
   torch.cuda.max_memory_allocated (weights included).

Exit status 0 when every correctness check passed and the latency part ran, 1 otherwise (the JSON is
written either way: a one-shot GPU run should bring back whatever it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

# The tiny models the CPU tests build on (tests/fixtures/tiny_models.py) are imported from the repository's
# tests/ dir, so this script checks exactly the models those tests check.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures.tiny_models import HIDDEN, make_llama, make_prompt, reference_logits  # noqa: E402
from fixtures.tiny_models import tiny_cogact, tiny_openvla  # noqa: E402
from fixtures.tiny_models import obs as tiny_obs  # noqa: E402

from vla_accel.accel.accelerate import accelerate  # noqa: E402
from vla_accel.accel.config import AccelConfig, TokenPruningConfig  # noqa: E402
from vla_accel.accel.flops import LLMShape, accelerated_prefill_flops  # noqa: E402
from vla_accel.accel.runner import AcceleratedRunner  # noqa: E402
from vla_accel.measure.timing import STAGES  # noqa: E402
from vla_accel.policies.common.action_tokenizer import compute_norm_stats  # noqa: E402
from vla_accel.policies.common.factory import policy_class  # noqa: E402
from vla_accel.policies.common.prompt import positions_from_mask  # noqa: E402
from vla_accel.policies.llm_runner import HFRunner  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# The pruned-vs-reference tolerance (_tolerance_check). float32: the CPU tests' own atol / rtol. In bf16 no
# fixed number fits: the runner (cached SDPA) and the reference (cache-free, math SDPA) round every layer's
# output to 8 mantissa bits in different orders, ~0.2-0.3 on logits of magnitude ~6 in the tiny Llama (its
# sharp init), while a real bug (pruning one layer late) is off by 1-2.5 (measured on CPU bf16, 3 seeds).
# So both are compared with a float32 reference of the same weights, and the runner may be at most
# NOISE_FACTOR times as far from it as the bf16 reference is (measured: at most 1.25 times).
FP32_ATOL, FP32_RTOL, NOISE_FACTOR = 2e-5, 1e-4, 2.0
INSTRUCTION = "pick up the black bowl next to the ramekin and place it on the plate beside the red coffee mug"

# OpenVLA-7B's towers (prismatic: vit_large_patch14_reg4_dinov2 + vit_so400m_patch14_siglip_224), the
# second-to-last block's patch features, as conf/policy/openvla_gpu.yaml lays out its smaller ones.
DINO_L14 = dict(image_size=224, patch_size=14, width=1024, depth=24, num_heads=16, mlp_dim=4096, reg_tokens=4,
                no_embed_class=True, layer_scale=True, feature_layer=-2,
                image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
SIGLIP_SO400M = dict(image_size=224, patch_size=14, width=1152, depth=27, num_heads=16, mlp_dim=4304,
                     class_token=False, no_embed_class=True, feature_layer=-2,
                     image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
SHAPES = {
    "7b": dict(vision=[DINO_L14, SIGLIP_SO400M], vocab=32064, standardize_visual=False, bpe_vocab_size=2048,
               llm=dict(hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008,
                        max_position_embeddings=2048)),
    # conf/policy/openvla_tiny.yaml's shape (16 visual tokens) with 4 layers: room for K = 2 and a later layer
    "tiny": dict(vision=[dict(image_size=32, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64,
                              feature_layer=-1)], vocab=None, standardize_visual=True, bpe_vocab_size=512,
                 llm=dict(hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
                          max_position_embeddings=256)),
}


# ------------------------------------------------------------------ helpers


def resolve_device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"gpu_check: --device {name} needs a CUDA GPU, but torch {torch.__version__} (CUDA build: "
                 f"{torch.version.cuda}) sees none. For a CPU dry run of the plumbing: "
                 "--shape tiny --device cpu --dtype float32")
    return dev


@contextlib.contextmanager
def building_on(dev: torch.device, dtype: torch.dtype):
    """New tensors are created on `dev` in `dtype`: a 7B model is allocated on the GPU in bf16 directly,
    never as a 30 GB float32 copy in host memory."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            yield
    finally:
        torch.set_default_dtype(saved)


def _on(prompt: dict, dev: torch.device, dtype: torch.dtype) -> dict:
    """make_prompt()'s tensors on dev; the float ones (the embeddings) in dtype."""
    return {k: (v.to(dev, dtype) if v.is_floating_point() else v.to(dev)) if torch.is_tensor(v) else v
            for k, v in prompt.items()}


def _decode_tokens(n: int, batch: int, dev, dtype, seed: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)  # a CPU generator: the same tokens on every device
    return [torch.randn(batch, 1, HIDDEN, generator=g).to(dev, dtype) for _ in range(n)]


def _pruning(method: str, layer: int | None = None, keep_ratio: float = 0.5, **params) -> AccelConfig:
    return AccelConfig(pruning=TokenPruningConfig(method=method, layer=layer, keep_ratio=keep_ratio, params=params))


def _run(runner, llm, prompt: dict, tokens: list) -> tuple[list, object]:
    """prefill + decode each token (as tests/accel/test_runner.py's run): [(logits, hidden)], the prefill result."""
    res = runner.prefill(llm, **prompt)
    out, pos = [(res.logits, res.hidden)], res.next_position[:, None]
    for tok in tokens:
        out.append(runner.decode_one_token(llm, tok, res.cache, pos))
        pos = pos + 1
    runner.end_step()
    return out, res


def _max_abs_diff(pairs) -> float | None:
    """max |a - b| over the pairs; None when either side holds a NaN (JSON has no NaN)."""
    worst = 0.0
    for a, b in pairs:
        a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
        if torch.isnan(a).any() or torch.isnan(b).any():
            return None
        worst = max(worst, float((a - b).abs().max()))
    return worst


def _identical(pairs, **extra) -> dict:
    pairs = list(pairs)
    same = all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in pairs)
    diff = _max_abs_diff(pairs)
    ok = same and diff is not None and all(extra.values())
    return {"passed": bool(ok), "criterion": "torch.equal", "max_abs_diff": diff, "nan": diff is None, **extra}


# ------------------------------------------------------------------ correctness


def check_runner_identity(dev, dtype) -> dict:
    """(a) test_runner.py::test_everything_off_equals_hf_runner_exactly on dev / dtype."""
    llm = make_llama(num_layers=6).to(dev, dtype)
    prompt, tokens = _on(make_prompt(), dev, dtype), _decode_tokens(3, 3, dev, dtype)
    configs = {"off": AccelConfig(), "keep_all": _pruning("fastv", keep_ratio=1.0),
               "vla_pruner_warmup": _pruning("vla_pruner")}  # the first VLA-Pruner step does not prune
    out = {}
    ref, ref_res = _run(HFRunner(), llm, prompt, tokens)
    for name, cfg in configs.items():
        got, got_res = _run(AcceleratedRunner(cfg), llm, prompt, tokens)
        pairs = [p for (rl, rh), (gl, gh) in zip(ref, got) for p in ((rl, gl), (rh, gh))]
        out[f"runner_{name}_equals_hf"] = _identical(
            pairs, positions_equal=torch.equal(ref_res.next_position, got_res.next_position))
    return out


def check_policy_identity(dev, dtype) -> dict:
    """(b) test_accelerate.py::test_openvla_with_everything_off_gives_the_same_actions (and CogACT's)."""
    out = {}
    for name, build in (("openvla", tiny_openvla), ("cogact", tiny_cogact)):
        policy = build().to(dev, dtype)
        shape = (2, policy.config.chunk_size, policy.config.action_dim) if name == "cogact" else None
        # CogACT samples its chunk from noise: the same initial noise on both sides (CPU generator)
        noise = None if shape is None else torch.randn(shape, generator=torch.Generator().manual_seed(0))
        kw = {} if noise is None else {"noise": noise}

        def actions():
            policy.reset()
            return [policy.predict_action_chunk(tiny_obs(seed=s, batch=2), **kw) for s in range(3)]

        policy.runner = HFRunner()
        ref = actions()
        accelerate(policy, "none")
        got = actions()
        res = _identical([(torch.from_numpy(a), torch.from_numpy(b)) for a, b in zip(ref, got)],
                         accelerated=isinstance(policy.runner, AcceleratedRunner))
        out[f"policy_{name}_none_equals_plain"] = {**res, "criterion": "np.array_equal of actions"}
    return out


def _kept_rows(T: int, visual_start: torch.Tensor, num_visual: int, kept: torch.Tensor) -> torch.Tensor:
    """(B, T - M + M~) the prompt indices that survive pruning, ascending (written here, not taken from the
    runner, so that the reference stays independent of the code it checks)."""
    keep = torch.ones(kept.shape[0], T, dtype=torch.bool, device=kept.device)
    keep.scatter_(1, visual_start[:, None] + torch.arange(num_visual, device=kept.device), False)
    keep.scatter_(1, visual_start[:, None] + kept, True)
    return keep.nonzero()[:, 1].view(kept.shape[0], -1)


def _reference(llm, prompt, tokens, res, kept, layer, dev):
    """reference_logits on the prompt + the decoded tokens, cut to the kept rows at `layer`."""
    mask0 = prompt["attention_mask"]
    (B, T), n = mask0.shape, len(tokens)
    steps = torch.arange(n, device=dev)
    keep_rows = torch.cat([_kept_rows(T, prompt["visual_start"], prompt["num_visual"], kept),
                           T + steps.expand(B, n)], dim=1)
    embeds = torch.cat([prompt["inputs_embeds"], *tokens], dim=1)
    mask = torch.cat([mask0, torch.ones(B, n, dtype=mask0.dtype, device=dev)], dim=1)
    pos = torch.cat([positions_from_mask(mask0), res.next_position[:, None] + steps], dim=1)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # torch.device: reference_logits builds its causal mask with torch.ones (the default device). The math
    # SDPA backend: a left pad's query row is fully masked, and math gives it 0 where a fused CUDA kernel
    # may give NaN, which would then spread through the pads' values -- a reference artefact, not a bug.
    with torch.device(dev), sdpa_kernel(SDPBackend.MATH):
        ref = reference_logits(llm, embeds, mask, pos, prune_layer=layer, keep_rows=keep_rows)
    first = keep_rows.shape[1] - n - 1  # the prompt's last kept row, then each decoded token's
    return [ref[:, first + j] for j in range(n + 1)]


def _tolerance_check(got: list, refs: list, refs32: list, dtype) -> dict:
    """got (the runner's logits), refs (the reference in the same dtype), refs32 (the reference in float32 on the
    same weights and inputs): |got - ref32| <= FP32_ATOL + FP32_RTOL |ref32| + NOISE_FACTOR * noise, noise =
    max |ref - ref32| (0 in float32: then it is the CPU tests' criterion)."""
    noise = _max_abs_diff(zip(refs, refs32))
    to32 = _max_abs_diff(zip(got, refs32))
    if noise is None or to32 is None:
        return {"passed": False, "nan": True, "max_abs_diff": None}
    bound = NOISE_FACTOR * noise
    close = all(bool(((g.double() - r.double()).abs() <= FP32_ATOL + FP32_RTOL * r.double().abs() + bound).all())
                for g, r in zip(got, refs32))
    return {"passed": close, "nan": False, "max_abs_diff": _max_abs_diff(zip(got, refs)),
            "max_abs_diff_to_fp32_ref": to32, "ref_rounding_error": noise,
            "criterion": f"|got - ref_fp32| <= {FP32_ATOL:g} + {FP32_RTOL:g} |ref_fp32| + {NOISE_FACTOR:g} x "
                         f"max|ref_{str(dtype).removeprefix('torch.')} - ref_fp32| (= {bound:.3g})",
            "max_abs_ref": float(max(r.abs().max() for r in refs32))}


def check_pruned_vs_reference(dev, dtype) -> dict:
    """(c) test_runner.py::test_pruned_prefill_and_decode_match_cache_free_recompute for FastV / VLA-Pruner."""
    llm = make_llama(num_layers=6).to(dev, dtype)
    llm32 = copy.deepcopy(llm).float()  # the same (rounded) weights, computed in float32
    prompt, tokens = _on(make_prompt(), dev, dtype), _decode_tokens(3, 3, dev, dtype)
    prompt32, tokens32 = _on(prompt, dev, torch.float32), [t.float() for t in tokens]
    T, M = prompt["attention_mask"].shape[1], prompt["num_visual"]
    configs = {"fastv_K2": ("fastv", 2, {}), "fastv_K3": ("fastv", 3, {}),
               "vla_pruner_K2": ("vla_pruner", 2, {"window": 1, "action_layer": 4})}
    out = {}
    for name, (method, layer, params) in configs.items():
        runner = AcceleratedRunner(_pruning(method, layer=layer, keep_ratio=0.5, **params))
        if method == "vla_pruner":
            _run(runner, llm, prompt, tokens)  # one step of action-attention history (window 1): then it prunes
        got, res = _run(runner, llm, prompt, tokens)
        kept = runner.stats.kept_visual
        refs = _reference(llm, prompt, tokens, res, kept, layer, dev)
        refs32 = _reference(llm32, prompt32, tokens32, res, kept, layer, dev)
        result = _tolerance_check([g for g, _ in got], refs, refs32, dtype)
        cache_ok = _cache_holds_kept(res.cache, layer, T, T - M + kept.shape[1], len(tokens))
        result["passed"] = bool(result["passed"] and runner.stats.pruned and cache_ok is not False)
        out[f"pruned_{name}_matches_reference"] = {**result, "pruned": bool(runner.stats.pruned),
                                                   "kept_visual": int(kept.shape[1]), "of": M, "cache_ok": cache_ok}
    return out


def _cache_holds_kept(cache, layer: int, T: int, T_kept: int, n: int) -> bool | None:
    """Layers < K cache the whole prompt, layers >= K only the kept tokens (+ the n decoded ones each).
    None when this transformers' DynamicCache does not expose `.layers[i].keys` (nothing to check)."""
    try:
        lengths = [int(layer_cache.keys.shape[2]) for layer_cache in cache.kv.layers]
    except AttributeError:
        return None
    return lengths == [(T if i < layer else T_kept) + n for i in range(len(lengths))]


def run_correctness(dev, dtype, log) -> dict:
    checks = {}
    for fn in (check_runner_identity, check_policy_identity, check_pruned_vs_reference):
        try:
            with torch.no_grad():
                checks.update(fn(dev, dtype))
        except Exception as e:  # record it and go on: the other checks and the latency still tell something
            traceback.print_exc()
            checks[fn.__name__] = {"passed": False, "error": f"{type(e).__name__}: {e}"}
        log(f"correctness: {fn.__name__} done")
    return {"dtype": str(dtype).removeprefix("torch."), "all_passed": all(c["passed"] for c in checks.values()),
            "tolerance": {"identity": "exact (torch.equal / np.array_equal)",
                          "pruned": {"fp32_atol": FP32_ATOL, "fp32_rtol": FP32_RTOL, "noise_factor": NOISE_FACTOR,
                                     "rule": "|got - ref_fp32| <= fp32_atol + fp32_rtol |ref_fp32| + noise_factor"
                                             " x max|ref_dtype - ref_fp32|"}},
            "checks": checks}


# ------------------------------------------------------------------ latency


def build_policy(shape: dict, dev, dtype):
    """A random-weight OpenVLA-style policy of `shape` (SHAPES), built on dev in dtype."""
    cls = policy_class("openvla")
    model = {k: v for k, v in shape.items() if k != "vocab"}
    config = cls.config_class.from_dict({**model, "input_image_size": None, "cameras": ["agentview"]})
    actions = np.random.default_rng(0).uniform(-1, 1, (64, config.action_dim))
    config.norm_stats = {"gpu_check": compute_norm_stats(actions)}
    if shape["vocab"]:
        # The embedding table is len(tokenizer) rounded up to pad_to_multiple_of; our BPE tokenizer has ~2.3k
        # ids, so one multiple of 32064 gives OpenVLA's 32064-row table and LM head (their cost is what counts).
        config.pad_to_multiple_of = shape["vocab"]
    torch.manual_seed(0)
    with building_on(dev, dtype):
        policy = cls.from_config(config, extra_texts=[INSTRUCTION])
    return policy.to(dev, dtype).eval()  # buffers made outside the default dtype follow too


def shape_info(policy) -> dict:
    c, llm = policy.config, policy.language_model.config
    towers = [f"ViT {v.width}x{v.depth} p{v.patch_size}@{v.image_size}" for v in c.vision]
    return {"towers": towers, "num_visual_tokens": c.num_visual_tokens, "llm_layers": llm.num_hidden_layers,
            "hidden": llm.hidden_size, "heads": llm.num_attention_heads, "intermediate": llm.intermediate_size,
            "vocab": llm.vocab_size, "attn": llm._attn_implementation, "action_tokens": c.action_dim,
            "params_b": sum(p.numel() for p in policy.parameters()) / 1e9, "batch": 1,
            "dtype": str(policy.dtype).removeprefix("torch."), "instruction": INSTRUCTION}


def make_frames(n: int, size: int, seed: int = 0) -> list[dict]:
    """Consecutive, slightly different frames (a fixed random image + small noise), as a robot camera
    gives: VLA-Pruner's temporal score needs a history of similar steps."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3))
    return [{"agentview_image": np.clip(base + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8),
             "instruction": INSTRUCTION} for _ in range(n)]


def latency_rows(policy, keep_ratios: list[float]) -> list[dict]:
    """The plain policy, then VLA-Pruner / FastV per keep ratio: each a view sharing the weights
    (`fork_episode`), so 7 configs cost one 15 GB model, each with its own runner and history."""
    rows = [{"name": "none", "keep_ratio": None, "policy": policy}]
    for method in ("vla_pruner", "fastv"):
        for r in keep_ratios:
            view = accelerate(policy.fork_episode(), method, keep_ratio=r)
            rows.append({"name": f"{method}@{r:g}", "keep_ratio": r, "policy": view})
    return rows


def _sample(policy, dev) -> dict:
    stats = getattr(policy.runner, "stats", None)
    pruned = stats is not None and stats.pruned
    return {"ms": dict(policy.last_timing),
            "tokens_kept": int(stats.kept_visual.shape[1]) if pruned else policy.config.num_visual_tokens,
            "peak_mem": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None}


def measure(rows: list[dict], frames: list[dict], warmup: int, dev, log, deadline: float) -> int:
    """Interleaved rounds (as vla_accel.tools.bench): each round every config once on that round's frame,
    the order rotated by one each round, so drift and "who runs first" spread over all configs. Stops early
    (after >= 1 timed round) when another round would pass `deadline` (perf_counter): a lent GPU's time is
    short, and fewer rounds beat no JSON. Returns the timed rounds run."""
    for row in rows:
        row["policy"].reset()
        row["samples"] = []
    n, timed = len(rows), 0
    for r, obs in enumerate(frames):
        t0 = time.perf_counter()
        for j in range(n):
            row = rows[(j + r) % n]
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            row["policy"].predict_action_chunk(obs)
            if r >= warmup:
                row["samples"].append(_sample(row["policy"], dev))
        timed += r >= warmup
        totals = " ".join(f"{row['name']}={row['policy'].last_timing['total']:.0f}" for row in rows)
        log(f"latency: round {r + 1}/{len(frames)}{' (warm-up)' if r < warmup else ''}, total ms {totals}")
        if timed and r + 1 < len(frames) and 2 * time.perf_counter() - t0 > deadline:  # now + one round
            log(f"latency: stopping after {timed} timed rounds (--budget-s)")
            break
    return timed


def summarise(rows: list[dict]) -> list[dict]:
    def pct(row, stage, q):
        vals = [s["ms"][stage] for s in row["samples"] if stage in s["ms"]]
        return float(np.percentile(vals, q)) if vals else None

    base = pct(rows[0], "total", 50)
    out = []
    for row in rows:
        p = row["policy"]
        stages = [s for s in STAGES if pct(row, s, 50) is not None]
        cfg = getattr(p, "accel_config", None)
        shape = LLMShape.from_config(p.language_model.config)
        M = p.config.num_visual_tokens
        ratio = 1.0 if cfg is None else accelerated_prefill_flops(shape, cfg, p.last_prompt_tokens, M)["ratio"]
        mem = [s["peak_mem"] for s in row["samples"] if s["peak_mem"] is not None]
        out.append({"name": row["name"], "keep_ratio": row["keep_ratio"], "n_calls": len(row["samples"]),
                    "p50_ms": {s: pct(row, s, 50) for s in stages}, "p90_ms": {s: pct(row, s, 90) for s in stages},
                    "speedup": base / pct(row, "total", 50), "flops_ratio": ratio,
                    "tokens_kept": float(np.mean([s["tokens_kept"] for s in row["samples"]])), "tokens_of": M,
                    "prompt_tokens": p.last_prompt_tokens, "peak_mem_gb": max(mem) / 2**30 if mem else None})
    return out


def run_latency(args, dev, dtype, log, deadline: float) -> dict:
    if args.warmup < 3:
        raise ValueError("--warmup must be >= 3: VLA-Pruner runs its first 3 steps unpruned (its history)")
    policy = build_policy(SHAPES[args.shape], dev, dtype)
    info = shape_info(policy)
    log(f"latency: built the {args.shape} policy ({info['params_b']:.2f} B parameters)")
    rows = latency_rows(policy, args.keep_ratios)
    frames = make_frames(args.warmup + args.rounds, policy.config.image_size)
    with torch.no_grad():
        timed = measure(rows, frames, args.warmup, dev, log, deadline)
    info["prompt_tokens"] = policy.last_prompt_tokens
    return {"shape": info, "rounds": timed, "rounds_requested": args.rounds, "warmup_rounds": args.warmup,
            "configs": summarise(rows)}


# ------------------------------------------------------------------ report


def print_report(report: dict) -> None:
    print(f"\ngpu_check on {report['device']} (torch {report['torch']}), {report['wall_s']:.0f} s")
    for name, c in report["correctness"]["checks"].items():
        diff = c.get("max_abs_diff")
        print(f"  {'PASS' if c['passed'] else 'FAIL'}  {name:40s} max|diff| "
              f"{'-' if diff is None else f'{diff:.3g}'}  {c.get('error', '')}")
    lat = report["latency"]
    if "error" in lat:
        print(f"latency: FAILED: {lat['error']}")
        return
    cols = ["vision", "prefill", "select", "decode", "total"]
    sh = lat["shape"]
    print(f"\nlatency, p50 ms ({lat['rounds']} timed rounds; select is inside prefill/decode): {sh['towers']}"
          f" + Llama {sh['llm_layers']}x{sh['hidden']}, {sh['prompt_tokens']} prompt tokens, {sh['dtype']}")
    print(f"{'config':16s}{'tokens':>9s}" + "".join(f"{c:>9s}" for c in cols)
          + f"{'p90 tot':>9s}{'speedup':>9s}{'FLOPs':>8s}{'mem GB':>8s}")
    for r in lat["configs"]:
        cells = "".join(f"{r['p50_ms'][c]:9.1f}" if c in r["p50_ms"] else f"{'-':>9s}" for c in cols)
        mem = "-" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f}"
        print(f"{r['name']:16s}{r['tokens_kept']:5.0f}/{r['tokens_of']:<3d}{cells}{r['p90_ms']['total']:9.1f}"
              f"{r['speedup']:8.2f}x{r['flops_ratio']:8.3f}{mem:>8s}")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Correctness on CUDA in bf16 + latency of an OpenVLA-7B-shaped "
                                 "policy under VLA-Pruner / FastV; one JSON file (see the module docstring).")
    ap.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b", help="the latency policy's shape")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (each: every config once)")
    ap.add_argument("--warmup", type=int, default=4, help="untimed rounds first (>= 3: VLA-Pruner's history)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="stop the timed rounds early once another would end later than this many seconds "
                         "after the start (at least one timed round always runs)")
    ap.add_argument("--keep-ratios", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    dev, dtype = resolve_device(args.device), DTYPES[args.dtype]
    start = time.perf_counter()

    def log(msg: str) -> None:  # timestamps: a run with a hard time limit shows where its time went
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    import transformers

    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python scripts/gpu_check.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    log(f"gpu_check on {report['device']}, {args.dtype}, shape {args.shape}")
    report["correctness"] = run_correctness(dev, dtype, log)
    try:
        report["latency"] = run_latency(args, dev, dtype, log, start + args.budget_s)
    except Exception as e:  # still write the correctness results
        traceback.print_exc()
        report["latency"] = {"error": f"{type(e).__name__}: {e}"}
    report["wall_s"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print_report(report)
    log(f"wrote {args.out}")
    return 0 if report["correctness"]["all_passed"] and "error" not in report["latency"] else 1


if __name__ == "__main__":
    sys.exit(main())
