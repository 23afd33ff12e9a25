"""Time the LLM part of one control step (prefill + 6 decoded tokens) under each accelerator config.

A random Llama (no download) with an OpenVLA-shaped prompt: [BOS][256 visual][30 text]. Every config
runs in ONE process, interleaved round by round so machine drift cancels; warm-up rounds are not
counted (they also fill VLA-Pruner's 3-step history). Reports p50 per config and the ratio to the plain
HFRunner; outputs of `accel_off` are bit-identical to HFRunner's (tests/accel/test_runner.py).

    python scripts/bench_llm_runner.py --layers 8 --hidden 512 --rounds 15 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vla_accel.accel.config import AccelConfig, LayerSkipConfig, TokenPruningConfig
from vla_accel.accel.flops import LLMShape, accelerated_prefill_flops
from vla_accel.policies.llm_runner import HFRunner
from vla_accel.accel.runner import AcceleratedRunner


def configs(num_layers: int) -> dict[str, AccelConfig | None]:
    mid = max(0, num_layers // 2 - 1)
    return {
        "hf": None,
        "accel_off": AccelConfig(),
        "fastv_25_K3": AccelConfig(TokenPruningConfig("fastv", keep_ratio=0.25, layer=3)),
        "vla_pruner_25_K3": AccelConfig(TokenPruningConfig("vla_pruner", keep_ratio=0.25, layer=3,
                                                           params={"action_layer": mid})),  # fmt: skip
        "divprune_25": AccelConfig(TokenPruningConfig("divprune", keep_ratio=0.25)),
        "skip2": AccelConfig(layer_skip=LayerSkipConfig(layers=(num_layers - 3, num_layers - 2))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--visual", type=int, default=256)
    ap.add_argument("--text", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      max_position_embeddings=2048)  # fmt: skip
    llm = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").eval().to(dev)
    M, N = args.visual, args.text
    T = 1 + M + N
    prompt = dict(
        inputs_embeds=torch.randn(1, T, args.hidden, device=dev), attention_mask=torch.ones(1, T, dtype=torch.long, device=dev),
        visual_start=torch.tensor([1], device=dev), num_visual=M,
        text_mask=torch.cat([torch.zeros(1, 1 + M, dtype=torch.bool), torch.ones(1, N, dtype=torch.bool)], 1).to(dev),
    )  # fmt: skip
    token = torch.randn(1, 1, args.hidden, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def one_step(runner) -> tuple[float, float]:
        sync()
        t0 = time.perf_counter()
        res = runner.prefill(llm, **prompt)
        sync()
        t1 = time.perf_counter()
        pos = res.next_position[:, None]
        for _ in range(6):
            runner.decode_one_token(llm, token, res.cache, pos)
            pos = pos + 1
        sync()
        t2 = time.perf_counter()
        runner.end_step()
        return t1 - t0, t2 - t1

    named = configs(args.layers)
    runners = {k: HFRunner() if c is None else AcceleratedRunner(c) for k, c in named.items()}
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in runners}
    with torch.no_grad():
        for r in runners.values():
            for _ in range(args.warmup):
                one_step(r)
        for _ in range(args.rounds):
            for k, r in runners.items():
                pre, dec = one_step(r)
                times[k][0].append(pre)
                times[k][1].append(dec)
    shape = LLMShape.from_config(cfg)
    print(f"# {platform.processor() or platform.machine()} {dev} threads={args.threads} torch {torch.__version__}; "
          f"Llama {args.layers}x{args.hidden}, T={T} (M={M}); p50 of {args.rounds} interleaved rounds")  # fmt: skip
    base = statistics.median(times["hf"][0])
    for k, (pre, dec) in times.items():
        c = named[k] or AccelConfig()
        flops = accelerated_prefill_flops(shape, c, T, M)["ratio"]
        print(f"{k:18s} prefill {statistics.median(pre) * 1e3:8.1f} ms  x{base / statistics.median(pre):4.2f}  "
              f"(FLOPs ratio {flops:.3f})   6 decodes {statistics.median(dec) * 1e3:7.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
