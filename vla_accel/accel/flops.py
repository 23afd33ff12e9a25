"""Analytic FLOPs of a VLA forward (the formula is written next to every number).

Per transformer layer on n tokens, hidden size d, MLP width m (VLA-Pruner's / FastV's count):

    C(n) = 4 n d^2 + 2 n^2 d + 3 n d m

(4nd^2: the q, k, v, o projections; 2n^2 d: q k^T and attention x v; 3ndm: the gate, up and down
projections of the SwiGLU MLP.) Like the papers, one multiply-accumulate counts as one FLOP here and
norms, softmax, RoPE and the LM head are left out. Decoding one token against a cache of c entries:
4 d^2 + 2 (c + 1) d + 3 d m.

The pruning layer K (``prune_layer``) follows the one convention of
``vla_accel.accel.config.TokenPruningConfig``: K = the number of layers that see every token (layers
0..K-1 cost C(n), layers K.. cost C(n~)); :func:`pruning_flops_ratio` converts from VLA-Pruner's K.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

LAYER_FORMULA = "C(n) = 4*n*d^2 + 2*n^2*d + 3*n*d*m"


def layer_flops(n: int, d: int, m: int, n_keys: int | None = None) -> int:
    """C(n) = 4*n*d^2 + 2*n^2*d + 3*n*d*m for one layer on n tokens; with ``n_keys`` (n queries over more
    keys, as under VLA-Cache's reuse) the attention term is 2*n*n_keys*d."""
    n_k = n if n_keys is None else n_keys
    return 4 * n * d * d + 2 * n * n_k * d + 3 * n * d * m


def decode_layer_flops(cache_len: int, d: int, m: int) -> int:
    """4*d^2 + 2*(c+1)*d + 3*d*m: one new token through one layer that caches c tokens."""
    return 4 * d * d + 2 * (cache_len + 1) * d + 3 * d * m


@dataclass(frozen=True)
class LLMShape:
    num_layers: int  # T in the ratio formula
    hidden: int  # d
    mlp: int  # m

    @classmethod
    def from_config(cls, config) -> LLMShape:
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size)


def _layers_run(shape: LLMShape, skip_layers: Iterable[int]) -> list[int]:
    skip = set(skip_layers)
    bad = [x for x in skip if not 0 <= x < shape.num_layers]
    if bad:
        raise ValueError(f"skip layers {sorted(bad)} are outside 0..{shape.num_layers - 1}")
    return [i for i in range(shape.num_layers) if i not in skip]


def tokens_at_layer(layer: int, n: int, stages: Sequence[tuple[int, int]] = ()) -> int:
    """The prompt tokens layer ``layer`` sees: n, or the count after the last pruning stage (K_s, n_s)
    with K_s <= layer (multi-stage pruning: each stage cuts the sequence again)."""
    tokens = n
    for k, n_after in stages:
        if layer >= k:
            tokens = n_after
    return tokens


def _stages(n_kept: int | None, prune_layer: int | None, stages) -> tuple[tuple[int, int], ...]:
    if (n_kept is None) != (prune_layer is None):
        raise ValueError("give both n_kept and prune_layer, or neither")
    if stages is not None:
        if n_kept is not None:
            raise ValueError("give stages or n_kept/prune_layer, not both")
        return tuple(stages)
    return () if prune_layer is None else ((prune_layer, n_kept),)


def prefill_flops(
    shape: LLMShape, n: int, n_kept: int | None = None, prune_layer: int | None = None, skip_layers: Iterable[int] = (),
    stages: Sequence[tuple[int, int]] | None = None,
) -> int:  # fmt: skip
    """sum over the executed layers l of C(n_l): n_l = n for l < K, n_kept for l >= K (K = the layers that
    see every token, ``TokenPruningConfig``); with ``stages`` [(K_s, n_s)], n_l = tokens_at_layer(l);
    skipped layers cost nothing."""
    plan = _stages(n_kept, prune_layer, stages)
    return sum(layer_flops(tokens_at_layer(i, n, plan), shape.hidden, shape.mlp) for i in _layers_run(shape, skip_layers))


def decode_flops(
    shape: LLMShape, n: int, step: int = 0, n_kept: int | None = None, prune_layer: int | None = None,
    skip_layers: Iterable[int] = (), stages: Sequence[tuple[int, int]] | None = None,
) -> int:  # fmt: skip
    """One decoded token, the ``step``-th after the prompt (0 = first): per executed layer
    4*d^2 + 2*(c+1)*d + 3*d*m with c = (the prompt tokens that layer cached) + step."""
    plan = _stages(n_kept, prune_layer, stages)
    return sum(decode_layer_flops(tokens_at_layer(i, n, plan) + step, shape.hidden, shape.mlp)
               for i in _layers_run(shape, skip_layers))  # fmt: skip


def vit_flops(num_layers: int, num_patches: int, hidden: int, mlp: int, mlp_matrices: int = 2) -> int:
    """Vision encoder: per layer 4*n*d^2 + 2*n^2*d + mlp_matrices*n*d*m (a plain ViT MLP has 2 matrices,
    a SwiGLU 3), summed over its layers; patch embedding and norms are left out."""
    n, d = num_patches, hidden
    return num_layers * (4 * n * d * d + 2 * n * n * d + mlp_matrices * n * d * mlp)


def projector_flops(num_tokens: int, dims: Iterable[int]) -> int:
    """An MLP projector with layer widths dims = (d_in, d_1, ..., d_out): sum_i n * d_i * d_{i+1}."""
    dims = list(dims)
    return sum(num_tokens * a * b for a, b in zip(dims[:-1], dims[1:]))


def pruning_flops_ratio(num_layers: int, k_paper: int, n: int, n_kept: int, d: int, m: int) -> float:
    """VLA-Pruner's r = [(K-1) C(n) + (T-K+1) C(n~)] / (T C(n)) for T layers.

    The paper counts layers from 1 and its K is the first pruned layer, so K-1 layers run in full; our
    ``prune_layer`` (the number of layers that see every token: ``TokenPruningConfig``) equals
    K_paper - 1 -- the vla_pruner preset's prune_layer=2 is the paper's K=3 -- and ``prefill_flops``
    with the same plan gives the same ratio.
    """
    if not 1 <= k_paper <= num_layers:
        raise ValueError(f"k_paper must be in 1..{num_layers}, got {k_paper}")
    full, kept = layer_flops(n, d, m), layer_flops(n_kept, d, m)
    return ((k_paper - 1) * full + (num_layers - k_paper + 1) * kept) / (num_layers * full)


def accelerated_prefill_flops(shape: LLMShape, accel_config, n: int, num_visual: int) -> dict:
    """Prefill FLOPs of the plain model and of the model under ``accel_config`` (an AccelConfig) for a
    prompt of n tokens of which num_visual are visual: {"formula", "baseline", "accelerated", "ratio",
    "tokens_kept"}. Pruning is counted as active (VLA-Pruner's warm-up steps run at baseline cost)."""
    from vla_accel.accel.config import resolve_plan

    from vla_accel.accel.pruning import build_method

    plan = resolve_plan(accel_config, shape.num_layers)
    skipped = [i for i in range(shape.num_layers) if i not in plan.executed]
    stages: tuple[tuple[int, int], ...] = ()
    kept_visual = num_visual
    pruning = accel_config.pruning
    if pruning is not None:
        kept_visual = pruning.budget(num_visual)
        budgets = build_method(pruning.method, **pruning.params).stage_budgets(num_visual, kept_visual)
        stages = tuple((k, n - num_visual + b) for k, b in zip(plan.stage_layers, budgets))
    base = prefill_flops(shape, n)
    acc = prefill_flops(shape, n, skip_layers=skipped, stages=stages)
    return {"formula": LAYER_FORMULA, "baseline": base, "accelerated": acc, "ratio": acc / base,
            "tokens_kept": kept_visual}  # fmt: skip
