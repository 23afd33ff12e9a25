"""The runner's "select" stage (probes + capture + selection + history update) of VLA-Pruner, before /
after the speed-up, interleaved (not a test; run by hand):

    OMP_NUM_THREADS=1 .venv/bin/python tests/accel/pruning/time_select_runner.py

A random Llama (openvla_gpu's LLM width: hidden 1024, 16 heads, MLP 2816, 4 of its 12 layers -- the
select stage reads one score layer and one action layer, so depth does not change it; and a small one:
hidden 128) on a prompt of M visual + 30 other tokens, K = 2, 7 action queries per step (prefill's last +
6 decodes). "before" = the same runner with the frozen pre-speed-up greedy_max_min swapped in.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for fixtures
import reference_vla_pruner as ref  # noqa: E402

import vla_accel.accel.pruning.vla_pruner as vp  # noqa: E402
from vla_accel.accel.config import AccelConfig, TokenPruningConfig  # noqa: E402
from vla_accel.accel.runner import AcceleratedRunner  # noqa: E402
from vla_accel.measure.timing import StageTimer  # noqa: E402

FAST = vp.greedy_max_min


def _llama(hidden, heads, mlp, layers=4):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024)
    return LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").eval()


def _step(runner, llm, prompt, tokens, timer):
    with timer.call(), torch.no_grad():
        res = runner.prefill(llm, **prompt)
        pos = res.next_position[:, None]
        for tok in tokens:
            runner.decode_one_token(llm, tok, res.cache, pos)
            pos = pos + 1
        runner.end_step()
    return timer.last.get("select", 0.0), timer.last["total"]


def measure(hidden, heads, mlp, M, budget, rounds=20):
    llm = _llama(hidden, heads, mlp)
    T = M + 31
    g = torch.Generator().manual_seed(1)
    text = torch.zeros(1, T, dtype=torch.bool)
    text[:, 1 + M:] = True
    prompt = dict(inputs_embeds=torch.randn(1, T, hidden, generator=g), attention_mask=torch.ones(1, T, dtype=torch.long),
                  visual_start=torch.ones(1, dtype=torch.long), num_visual=M, text_mask=text)
    tokens = [torch.randn(1, 1, hidden, generator=g) for _ in range(6)]
    cfg = AccelConfig(pruning=TokenPruningConfig("vla_pruner", keep_tokens=budget, layer=2))
    runners = {"before": AcceleratedRunner(cfg), "after": AcceleratedRunner(cfg)}
    greedy = {"before": ref.greedy_max_min, "after": FAST}
    out = {k: [] for k in runners}
    for r in range(rounds + 4):  # 3 warm-up steps (w = 3) + 1
        for name in (list(runners) if r % 2 else list(runners)[::-1]):
            vp.greedy_max_min = greedy[name]
            sel, total = _step(runners[name], llm, prompt, tokens, StageTimer())
            if r >= 4:
                out[name].append((sel, total))
    vp.greedy_max_min = FAST
    kept = [runners[k].stats.kept_visual for k in runners]
    print(f"hidden={hidden} M={M} budget={budget} T={T} threads={torch.get_num_threads()} rounds={rounds}"
          f" kept equal: {torch.equal(*kept)}")
    for name, xs in out.items():
        sel, tot = np.array(xs).T
        print(f"  {name:6s} select p50 {np.median(sel):.2f} ms (p10 {np.percentile(sel, 10):.2f}, "
              f"p90 {np.percentile(sel, 90):.2f}); total p50 {np.median(tot):.1f} ms")


if __name__ == "__main__":
    torch.set_num_threads(1)
    measure(1024, 16, 2816, 256, 64)
    measure(128, 4, 344, 128, 32, rounds=60)
