"""Tokens kept and analytic FLOPs of a VLA policy's last inference call (for the timing block).

FLOPs follow ``vla_accel.accel.flops`` (one multiply-accumulate = one FLOP; norms, softmax, RoPE, the LM head
and embeddings left out), per stage, for the whole batch of the call:

* vision      = sum over encoders and cameras of vit_flops(blocks run, patches + prefix tokens, width,
                mlp_dim) + projector_flops(M, projector widths)
* prefill     = per executed LLM layer 4 n_q d^2 + 2 n_q n_k d + 3 n_q d m, with n_q = n_k = the tokens the
                layer sees (T before the pruning layer K, T - M + M~ from K on; with several pruning
                stages, the count after the last stage at or before the layer: the runner's
                ``stats.stage_tokens``; VLA-Cache: n_q = T minus the reused tokens, n_k = T); skipped
                layers cost 0
* decode      = sum over decoded tokens of vla_accel.accel.flops.decode_flops (OpenVLA: action_dim - 1 tokens)
* action_head = DiT: per full denoising step depth x (4 n w^2 + 2 n^2 w + 2 n w (r w)), n = H + 2
                tokens (H + 1 for CogACT's released DiT, whose timestep and condition share one token),
                x2 rows with classifier-free guidance; with the diffusion-head cache only
                ceil(steps / interval) steps recompute attention and MLP (the others count 0)
* total       = the sum.

Tokens kept = the visual tokens the LLM's later layers compute (M~ when pruned, M minus the reused
ones under VLA-Cache, else M), "of" M.
"""

from __future__ import annotations

import math

from vla_accel.accel.flops import LLMShape, decode_flops, layer_flops, projector_flops, tokens_at_layer, vit_flops
from vla_accel.policies.capabilities import has_dit_head


def vision_flops(config) -> int:
    """Encoders + projector for one observation (every camera)."""
    n_cam = len(config.cameras)
    total = 0
    for v in config.vision:
        total += vit_flops(v.last_block + 1, v.num_patches + v.num_prefix_tokens, v.width, v.mlp_dim)
    dv = sum(v.width for v in config.vision)
    d = config.text_config["hidden_size"]
    dims = (dv, 4 * dv, d, d) if config.projector_layers == 3 else (dv, d, d)
    return n_cam * total + projector_flops(config.num_visual_tokens, dims)


def dit_flops(config, interval: int = 1) -> int:
    """One denoising loop of the DiT head for one observation (see the module docstring)."""
    w, n = config.dit_width, config.chunk_size + getattr(config, "dit_condition_tokens", 2)
    per_pass = config.dit_depth * (4 * n * w * w + 2 * n * n * w + 2 * n * w * int(w * config.dit_mlp_ratio))
    rows = 2 if config.cfg_scale > 1.0 else 1
    full_steps = math.ceil(config.ddim_steps / max(1, int(interval)))
    return rows * full_steps * per_pass


def _executed_layers(policy, llm, accel, num_layers: int):
    """The LLM layers the policy's runner enters (all without acceleration)."""
    if accel is None:
        return range(num_layers)
    runner = getattr(policy, "runner", None)
    if callable(getattr(runner, "plan", None)):
        return runner.plan(llm).executed  # resolved once per model (a ranking file is read once)
    from vla_accel.accel.config import resolve_plan

    return resolve_plan(accel, num_layers).executed


def call_accounting(policy) -> dict:
    """{"tokens_kept", "tokens_of", "flops": {stage: FLOPs}} of the policy's last inference call, or {}
    for a policy that is not a VLA (no `config.num_visual_tokens` / `language_model`)."""
    config = getattr(policy, "config", None)
    llm = getattr(policy, "language_model", None)
    if config is None or llm is None or not hasattr(config, "num_visual_tokens"):
        return {}
    M = int(config.num_visual_tokens)
    shape = LLMShape.from_config(llm.config)
    stats = getattr(getattr(policy, "runner", None), "stats", None)
    T = int(getattr(stats, "num_tokens", 0) or getattr(policy, "last_prompt_tokens", 0) or 0)
    batch = int(getattr(policy, "last_batch_size", 1) or 1)
    if T == 0:  # the policy did not say how long its prompt was: only the tokens are known
        return {"tokens_kept": M, "tokens_of": M}
    accel = getattr(policy, "accel_config", None)
    executed = _executed_layers(policy, llm, accel, shape.num_layers)
    pruned = bool(getattr(stats, "pruned", False))
    n_after = int(getattr(stats, "num_tokens_after_pruning", T) or T) if pruned else T
    stages = tuple(tuple(x) for x in getattr(stats, "stage_tokens", ()) or ()) if pruned else ()
    reused = int(getattr(stats, "num_reused", 0) or 0)
    kept = M - (T - n_after) - reused
    d, m = shape.hidden, shape.mlp
    prefill = 0
    for i in executed:
        n = tokens_at_layer(i, T, stages)
        prefill += layer_flops(n - reused, d, m, n_keys=n)
    flops = {"vision": vision_flops(config), "prefill": prefill}
    if has_dit_head(policy):  # CogACT-style: the cognition token, then the DiT head
        head = getattr(accel, "head_cache", None)
        flops["action_head"] = dit_flops(config, head.interval if head is not None else 1)
    else:  # OpenVLA-style: action_dim tokens, the first from the prefill
        skipped = [i for i in range(shape.num_layers) if i not in set(executed)]
        flops["decode"] = sum(decode_flops(shape, T, k, skip_layers=skipped, stages=stages)
                              for k in range(config.action_dim - 1))
    flops = {k: float(v * batch) for k, v in flops.items()}
    flops["total"] = float(sum(flops.values()))
    return {"tokens_kept": int(kept), "tokens_of": M, "flops": flops}
