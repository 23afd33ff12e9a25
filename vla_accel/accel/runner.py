"""The accelerated LLM runner: one explicit loop over the Llama's own modules (gpt-fast style).

Same four methods as ``vla_accel.policies.llm_runner.HFRunner`` (docs/interfaces.md, "The LLM runner
seam"), so a policy cannot tell them apart except by speed:

prefill
    runs the executed layers (skipped layers are never entered). At the score layer K-1 it reads the
    head-averaged attention of ONLY the queries the pruning method asks for: a few (FastV's last, the
    text) recomputed on the side (``query_attention``; the layer keeps SDPA), all of them (VLA-Pruner) kept
    from the layer's own attention (``scored_attention``: the same bits, without repeating the layer's
    RMSNorm, q projection and RoPE; the layer's output unchanged). Before layer K it gathers each row's
    kept tokens -- every non-visual token plus the method's M~ visual tokens, in their original order
    and with their ORIGINAL position ids --
    and runs layers K.. on that shorter sequence, so their KV-cache entries hold only kept tokens while
    layers < K hold the full prompt (transformers' DynamicCache keeps one tensor per layer, and each
    group of layers gets its own padding mask).
decode_one_token
    one new token through the same layers, each group's mask extended by one.
action attention
    for methods that need it (VLA-Pruner), the attention the action queries pay the visual tokens at
    ``action_layer``: the last prefill query (OpenVLA's first action token / CogACT's cognition token)
    and every decoded query of the step (a decoded query's weights kept from the layer's own call,
    ``scored_attention``); their mean, as a (B, M) map with the tokens not kept at this
    step set to 0 (an action layer before K still sees them), is handed to the method at ``end_step()``.
timing
    the pruning method's own work -- the score-layer probe, the action-attention capture, ``select`` and
    the history update -- is timed as stage "select" through ``vla_accel.measure.timing.stage`` (the
    policy's timer, active during its call); it lies inside the policy's "prefill" / "decode" stages.
multi-stage pruning (FEATHER, ToDRE, TransPrune)
    the method's stages K_1 < K_2 < ... each keep a subset of the previous stage's tokens (budgets
    M~_1 >= M~_2 >= ...): before layer K_s the current rows are cut again to the non-visual tokens plus
    stage s's kept ones, still with their original position ids, and a new layer group starts, so every
    layer's KV cache and padding mask hold exactly the tokens that layer saw. Stage s's scores come from
    the last executed layer before K_s, over the tokens still kept (their keys are that layer's cache).
layer transitions (TransPrune)
    at the method's ``transition_layers`` forward hooks on the attention and MLP sublayers hand it each
    sublayer's (normed input, output) of the visual tokens still kept (``_sublayer_io``); the scores reach
    the next stage as ``SelectionContext.transition_scores``. Stage s cuts before layer K_s runs, so its
    transitions are those of the layers before it (the last one K_s - 1).
token merging (text_guided's SparseVLM recycling)
    a method's ``select_and_merge`` may name, per candidate, a kept token to average it into: after the cut
    that token's row holds the mean of its group's hidden states entering layer K, at its own original
    position id and KV slot (``_merge_tokens``); layers < K keep the unmerged tokens in their cache.
per-step budgets (the ``adaptive`` wrapper)
    ``method.step_budget`` may change this step's M~ (the policy hands each step's actions to
    ``observe_actions``); ``stats.keep_ratio`` reports the step's M~ / M, 1.0 when it keeps every token.
encoder attention (FasterVLM, VTC-CLS, HiPrune)
    ``encoder_attention_request`` hands the policy's vision tower the method's probe; the maps come back
    through ``observe_encoder_attention`` before the prefill, and only when a method asks.
token reuse (VLA-Cache)
    the static, task-irrelevant visual tokens are not run at all: only the other tokens are queries, and
    every layer's keys/values for the reused ones are copied from the previous step (``ReuseCache``).

With everything off it performs exactly transformers' own operations (same mask builder, same layer
calls, same final norm and head), so its outputs equal HFRunner's bit for bit.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import DynamicCache, LlamaForCausalLM
from transformers.masking_utils import create_causal_mask

from vla_accel.accel.config import AccelConfig, LayerPlan, resolve_plan
from vla_accel.measure.timing import stage
from vla_accel.policies.common.hf_compat import cache_kwarg
from vla_accel.policies.common.prompt import kept_token_index, positions_from_mask
from vla_accel.policies.llm_runner import PrefillResult
from vla_accel.accel.pruning import PruningMethod, SelectionContext, build_method
from vla_accel.accel.checks import check_prompt, check_selection, check_values
from vla_accel.accel.query_attention import query_attention, unrotated_keys
from vla_accel.accel.scored_attention import ScoreRequest, scored_call
from vla_accel.accel.token_reuse import ReuseCache, computed_token_index, pixel_patches, reusable_tokens


@dataclass
class LayerGroup:
    """Consecutive executed layers that share one token sequence (before / after pruning).

    first_layer: the group's first executed layer (its KV-cache entry sizes the mask)
    mask2d:      (B, S) padding mask over what the group's cache holds (+1 per decoded token)
    token_index: (B, S_prefill) long, the original prompt index of each cached prompt token
    """

    first_layer: int
    mask2d: Tensor
    token_index: Tensor
    visual_slots: tuple[Tensor, Tensor] | None = None  # the action capture's (slot -> visual index, is-visual)


@dataclass
class AcceleratedCache:
    kv: DynamicCache
    groups: list[LayerGroup]
    group_of_layer: dict[int, int]  # executed layer -> index into groups
    visual_start: Tensor  # (B,) long
    num_visual: int
    capture_action: bool  # whether decode steps record the action queries' attention


@dataclass
class StepStats:
    """What the last prefill did (for timing tables and tests)."""

    num_tokens: int = 0  # prompt length T
    num_tokens_after_pruning: int = 0  # T - M + M~ (== T when not pruned)
    pruned: bool = False
    kept_visual: Tensor | None = None  # (B, M~) long, kept visual indices (of the last stage), when pruned
    stage_tokens: list[tuple[int, int]] = field(default_factory=list)  # per applied stage: (K_s, tokens after)
    keep_ratio: float | None = None  # M~ / M of the last stage, when pruned
    num_reused: int = 0  # VLA-Cache: visual tokens per row whose K/V came from the previous step
    # where attention maps were read: (phase, layer, n_queries); "prefill" / "decode" = a side probe
    # (``query_attention``), "prefill:own" / "decode:own" = the layer's own attention kept (``scored_attention``)
    attention_probes: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass
class _ReuseState:
    """VLA-Cache's memory of the previous step (per batch row along dim 0)."""

    patches: Tensor  # (B, M, P) pixel patches
    relevance: Tensor  # (B, M) text -> vision attention at the relevance layer
    keys: list[Tensor | None]  # per layer (B, H_kv, T, hd) prompt keys (None: skipped layer)
    values: list[Tensor | None]
    attention_mask: Tensor  # (B, T) the prompt layout these entries belong to
    visual_start: Tensor  # (B,)


@dataclass
class _Prefill:
    """One prefill's working state, handed between the named steps of ``AcceleratedRunner.prefill``."""

    llm: LlamaForCausalLM
    plan: LayerPlan
    attention_mask: Tensor  # (B, T) the prompt's, as given
    visual_start: Tensor  # (B,)
    num_visual: int  # M
    text_mask: Tensor  # (B, T)
    budget: int  # M~
    prune: bool  # the method prunes at this step
    capture: bool  # the method records the action queries' attention
    x: Tensor  # (B, S, D) the current rows (S = T, or fewer after pruning / under reuse)
    mask2d: Tensor  # (B, S) padding mask of the current rows
    pos: Tensor  # (B, S) their RoPE positions (the original ones, pruned or not)
    token_index: Tensor  # (B, S) their prompt indices
    visual_idx: Tensor  # (B, M) the visual tokens' prompt indices
    visual_embeds: Tensor  # (B, M, D) the visual tokens' input embeddings
    kv: Any = None  # DynamicCache, or VLA-Cache's ReuseCache
    computed: Tensor | None = None  # VLA-Cache: (B, Q) prompt indices computed this step
    causal: Any = None  # the current group's attention mask
    pos_emb: tuple[Tensor, Tensor] | None = None  # the current group's rotary (cos, sin)
    groups: list[LayerGroup] = field(default_factory=list)
    group_of_layer: dict[int, int] = field(default_factory=dict)
    scores: Tensor | None = None  # (B, C) visual attention from the next stage's score layer
    budgets: tuple[int, ...] = ()  # M~ of every pruning stage
    next_stage: int = 0  # the first stage not applied yet
    kept: Tensor | None = None  # (B, C) visual indices still kept (None: all M)
    encoder_attention: dict | None = None  # encoder block -> (B, M)
    transition_scores: dict = field(default_factory=dict)  # LLM layer -> (B, M)
    grid: tuple[int, int, int] | None = None  # (cameras, rows, cols)
    relevance: Tensor | None = None  # (B, M) VLA-Cache's text -> vision attention


class AcceleratedRunner:
    """The drop-in replacement for HFRunner; ``AcceleratedRunner(AccelConfig())`` changes nothing."""

    def __init__(self, config: AccelConfig | None = None) -> None:
        self.config = config or AccelConfig()
        pruning = self.config.pruning
        self.method: PruningMethod | None = build_method(pruning.method, **pruning.params) if pruning else None
        self._plans: dict[int, LayerPlan] = {}
        self._step_action_attention: list[Tensor] = []  # (B, M) per action query of the current step
        self._frame: Tensor | None = None  # VLA-Cache: this step's pixel patches (B, M, P)
        self._cameras = 1  # cameras of the last frame: the visual tokens are n_cam patch grids
        self._encoder_attention: dict | None = None  # the probe's maps of this step's frame
        self._reuse_state: _ReuseState | None = None
        self.stats = StepStats()

    # ----------------------------------------------------------------------------------- episode state
    def reset(self) -> None:
        if self.method is not None:
            self.method.reset()
        self._step_action_attention = []
        self._frame = None
        self._reuse_state = None
        self._encoder_attention = None

    def observe_actions(self, actions: Any) -> None:
        """The actions the policy produced at this control step, (B, H, A) or (B, A), normalised to [-1, 1]
        (the executed part of a chunk); the policies call it just before ``end_step``. Adaptive budgets
        (``pruning/adaptive.py``) gate the next steps' keep ratio on this motion history."""
        if self.method is not None:
            acts = torch.as_tensor(actions).detach().float().cpu()  # a few numbers: the gate runs on the host
            self.method.observe_actions(acts[:, None] if acts.dim() == 2 else acts)  # (B, H, A)

    def end_step(self) -> None:
        if self.method is not None and self.method.needs_action_attention and self._step_action_attention:
            with stage("select"):
                captures = self._step_action_attention  # one per action query: CogACT's <cog>, OpenVLA's 7
                # the mean of one capture is itself (x / 1), so CogACT's step skips the stack and the mean
                action = captures[0] if len(captures) == 1 else torch.stack(captures).mean(0)  # (B, M)
                if self.stats.pruned:  # VLA-Pruner: a token pruned at this step has no action score (0)
                    action = _zero_unkept(action, self.stats.kept_visual)
                self.method.observe_step(action)
        self._step_action_attention = []

    def fork(self) -> "AcceleratedRunner":
        """A runner for another episode: the same config, its own pruning method instance and history."""
        return AcceleratedRunner(self.config)

    def observe_frame(self, pixel_values: Tensor, num_visual: int) -> None:
        """The policy's image encoder hands over each frame (B, n_cam, C, S, S); VLA-Cache keeps its pixel
        patches (B, M, P) in the visual tokens' order (``token_reuse.pixel_patches``)."""
        self._cameras = int(pixel_values.shape[1])
        if self.config.reuse is not None:
            self.observe_patches(pixel_patches(pixel_values.detach(), num_visual))

    def encoder_attention_request(self):
        """The pruning method's ``vision.AttentionProbe`` (a fresh one per frame), or None: the vision tower
        then computes no attention at all."""
        return self.method.encoder_attention_probe() if self.method is not None else None

    def observe_encoder_attention(self, maps: dict[int, Tensor]) -> None:
        """The probed encoder blocks' maps of this step's frame, block -> (B, M) in the visual tokens' order."""
        self._encoder_attention = {i: m.detach().float() for i, m in maps.items()}

    def observe_patches(self, patches: Tensor) -> None:
        """VLA-Cache: this control step's pixel patches (B, M, P), in the visual tokens' order."""
        self._frame = patches.detach()

    def call_stats(self) -> dict:
        """What the last prefill did (row 0): the ``accel_stats`` of openpi-style ``infer`` answers."""
        stats, kept = self.stats, self.stats.kept_visual
        return {"tokens": int(stats.num_tokens), "tokens_kept": int(stats.num_tokens_after_pruning),
                "pruned": bool(stats.pruned), "num_reused": int(stats.num_reused),
                "keep_ratio": stats.keep_ratio, "stage_tokens": [list(x) for x in stats.stage_tokens],
                "kept_visual": None if kept is None else kept[0].cpu().numpy().astype(np.int64)}

    def plan(self, llm: LlamaForCausalLM) -> LayerPlan:
        """The config bound to this model's layer count (validated once per layer count)."""
        n = llm.config.num_hidden_layers
        if n not in self._plans:
            self._plans[n] = resolve_plan(self.config, n)
        return self._plans[n]

    # ------------------------------------------------------------------------------------------ prefill
    @torch.no_grad()
    def prefill(
        self,
        llm: LlamaForCausalLM,
        inputs_embeds: Tensor,  # (B, T, D)
        attention_mask: Tensor,  # (B, T) 1 = real token; left-padded
        visual_start: Tensor,  # (B,) long
        num_visual: int,  # M
        text_mask: Tensor,  # (B, T) bool, the instruction's text tokens
    ) -> PrefillResult:
        check_prompt(inputs_embeds, attention_mask, visual_start, num_visual, text_mask)
        st = self._start_prefill(llm, inputs_embeds, attention_mask, visual_start, num_visual, text_mask)
        self._prune_due(st, 0)  # stages before the LLM (DivPrune, FasterVLM, the controls, ToDRE's first)
        self._open_group(st, st.plan.executed[0])
        for i in st.plan.executed:
            if self._prune_due(st, i):
                self._open_group(st, i)
            self._run_layer(st, i)
        return self._finish_prefill(st)

    def _prune_due(self, st: _Prefill, layer: int) -> bool:
        """Apply every stage whose K is <= ``layer`` and not applied yet; whether any was."""
        ks, applied = st.plan.stage_layers, False
        while st.prune and st.next_stage < len(ks) and layer >= ks[st.next_stage]:
            self._apply_pruning(st)
            applied = True
        return applied

    def _start_prefill(self, llm, inputs_embeds, attention_mask, visual_start, num_visual, text_mask) -> _Prefill:
        """A new control step: the step's stats, the budget, the rows, and the KV cache (VLA-Cache's when
        it reuses tokens, else an empty one)."""
        B, T, D = inputs_embeds.shape
        self._step_action_attention = []  # a prefill starts a new control step
        self.stats = StepStats(num_tokens=T, num_tokens_after_pruning=T)
        method = self.method
        config_budget = self.config.pruning.budget(num_visual) if method is not None else num_visual
        budget = _checked_step_budget(method, num_visual, config_budget) if method is not None else num_visual
        if method is not None and budget == num_visual:
            self.stats.keep_ratio = 1.0  # an adaptive step that keeps every token reports its ratio too
        device = inputs_embeds.device
        visual_idx = visual_start[:, None] + torch.arange(num_visual, device=device)  # (B, M)
        st = _Prefill(
            llm=llm, plan=self.plan(llm), attention_mask=attention_mask, visual_start=visual_start,
            num_visual=num_visual, text_mask=text_mask, budget=budget,
            prune=method is not None and budget < num_visual and method.wants_to_prune(B),
            # the config's budget: an adaptive step that keeps every token still feeds VLA-Pruner's history
            capture=method is not None and method.needs_action_attention and config_budget < num_visual,
            x=inputs_embeds, mask2d=attention_mask, pos=positions_from_mask(attention_mask),
            token_index=torch.arange(T, device=device).expand(B, T), visual_idx=visual_idx,
            visual_embeds=inputs_embeds.gather(1, visual_idx[..., None].expand(-1, -1, D)),  # (B, M, D)
        )  # fmt: skip
        if st.prune:
            self._start_stages(st, num_visual)
        st.computed = self._reuse_plan(attention_mask, visual_start, num_visual, T) if self.config.reuse else None
        if st.computed is not None:  # VLA-Cache: only the computed tokens run as queries
            reuse = self._reuse_state
            st.kv = ReuseCache(llm.config, reuse.keys, reuse.values, st.computed)
            st.x = st.x.gather(1, st.computed[..., None].expand(-1, -1, D))  # (B, Q, D)
            st.pos, st.token_index = st.pos.gather(1, st.computed), st.computed
            self.stats.num_reused = T - st.computed.shape[1]
        else:
            st.kv = DynamicCache(config=llm.config)
        return st

    def _start_stages(self, st: _Prefill, num_visual: int) -> None:
        """The stages' budgets, the encoder maps the method asked for, and the patch grid."""
        st.budgets = _stage_budgets(self.method, num_visual, st.budget, len(st.plan.stage_layers))
        st.encoder_attention, self._encoder_attention = self._encoder_attention, None  # this frame's only
        if self.method.encoder_attention_probe() is not None and st.encoder_attention is None:
            raise ValueError(
                f"{self.method.name} needs the vision encoder's attention: the policy's image encoder hands it "
                "over (runner.encoder_attention_request / observe_encoder_attention) before prefill"
            )
        st.grid = _patch_grid(num_visual, self._cameras)

    def _open_group(self, st: _Prefill, first_layer: int) -> None:
        """Start a run of layers over one token sequence: its causal mask and rotary embeddings."""
        B, T = st.attention_mask.shape
        device, rotary = st.x.device, st.llm.model.rotary_emb
        if st.computed is not None:  # reuse: the cache holds the whole prompt, the queries are computed rows
            st.groups.append(LayerGroup(first_layer, st.mask2d, torch.arange(T, device=device).expand(B, T)))
            keys_idx = torch.arange(T, device=device)
            causal = (keys_idx[None, None, :] <= st.computed[..., None]) & st.mask2d.bool()[:, None, :]  # (B, Q, T)
            st.causal, st.pos_emb = causal[:, None], rotary(st.x, st.pos)
            return
        st.groups.append(LayerGroup(first_layer, st.mask2d, st.token_index))
        st.causal = create_causal_mask(
            config=st.llm.config, inputs_embeds=st.x, attention_mask=st.mask2d,
            **cache_kwarg(create_causal_mask, st.kv), position_ids=st.pos, layer_idx=first_layer,
        )  # fmt: skip
        st.pos_emb = rotary(st.x, st.pos)

    def _apply_pruning(self, st: _Prefill) -> None:
        """The next stage's selection: from here on the rows are the prompt's non-visual tokens + the kept
        ones (a subset of the previous stage's), in prompt order, with their original positions."""
        B, T = st.attention_mask.shape
        s, budget = st.next_stage, st.budgets[st.next_stage]
        slots = _visual_slots(st)  # (B, C) the candidates' current rows
        D = st.x.shape[-1]
        hidden = st.x.gather(1, slots[..., None].expand(-1, -1, D)) if self.method.needs_visual_hidden else None
        ctx = SelectionContext(
            visual_embeds=st.visual_embeds, visual_attention=st.scores, budget=budget, stage=s,
            candidates=st.kept, encoder_attention=st.encoder_attention,
            transition_scores=dict(st.transition_scores), grid=st.grid, visual_hidden=hidden,
        )  # fmt: skip
        with stage("select"):
            kept, merge_into = self.method.select_and_merge(ctx)
            kept = check_selection(kept, B, budget, st.num_visual, st.kept)  # (B, M~_s)
        keep_index = kept_token_index(T, st.visual_start, st.num_visual, kept)  # (B, T') prompt indices
        # the current rows are sorted prompt indices (st.token_index), so each kept one's row is found by search
        rows = keep_index if st.kept is None else torch.searchsorted(st.token_index, keep_index)
        before, st.x = st.x, st.x.gather(1, rows[..., None].expand(-1, -1, D))
        if merge_into is not None:  # SparseVLM's recycling: merged tokens take over kept tokens' rows
            with stage("select"):
                kept_rows = torch.searchsorted(keep_index, st.visual_start[:, None] + kept)  # (B, M~_s)
                st.x = _merge_tokens(before, slots, merge_into, st.x, kept_rows, kept, st.num_visual)
        st.pos, st.mask2d, st.token_index = st.pos.gather(1, rows), st.mask2d.gather(1, rows), keep_index
        st.kept, st.scores, st.next_stage = kept, None, s + 1
        self.stats.pruned, self.stats.kept_visual = True, kept
        self.stats.num_tokens_after_pruning = keep_index.shape[1]
        self.stats.stage_tokens.append((st.plan.stage_layers[s], keep_index.shape[1]))
        self.stats.keep_ratio = budget / st.num_visual

    def _run_layer(self, st: _Prefill, i: int) -> None:
        """Layer i over the current rows, then the attention probes the plan asks of that layer."""
        plan, llm = st.plan, st.llm
        st.group_of_layer[i] = len(st.groups) - 1
        h_in = st.x
        track = st.prune and st.next_stage < len(plan.stage_layers) and i in plan.transition_layers
        s = st.next_stage
        scoring = st.prune and s < len(plan.stage_layers) and i == plan.score_layers[s]
        scores_from_layer = scoring and self._scores_from_layer(s)
        capturing = st.capture and i == plan.action_layer
        request = _prefill_request(st) if scores_from_layer and st.computed is None else None
        layer = llm.model.layers[i]
        with _sublayer_io(layer, track) as sublayers, _scored(layer.self_attn, request) as extra:
            st.x = layer(
                st.x, attention_mask=st.causal, position_embeddings=st.pos_emb, position_ids=st.pos,
                **cache_kwarg(layer, st.kv), use_cache=True, **extra,
            )  # fmt: skip
        if track:
            self._score_transitions(st, i, sublayers)
        if scoring:
            with stage("select"):
                text = st.text_mask.gather(1, st.token_index)
                chosen = _chosen_queries(self.method.stage_queries(s), st.mask2d, text)
                own = None if request is None else request.head_mean  # None: a side probe recomputes them
                st.scores = self._prompt_scores(llm, i, h_in, st.pos, st.token_index, chosen, st.kv, st.mask2d,
                                                st.token_index, _visual_slots(st), own, st.pos_emb)  # fmt: skip
        if i == plan.relevance_layer:
            real = st.attention_mask.bool().gather(1, st.token_index)
            chosen = st.text_mask.bool().gather(1, st.token_index) & real
            all_keys = torch.arange(st.attention_mask.shape[1], device=h_in.device).expand_as(st.attention_mask)
            st.relevance = self._prompt_scores(llm, i, h_in, st.pos, st.token_index, chosen, st.kv,
                                               st.attention_mask, all_keys, st.visual_idx, None, st.pos_emb)  # fmt: skip
        if capturing:  # a side probe: the last row of an S-row product can round differently from a 1-row one
            last_cos_sin = tuple(t[:, -1:] for t in st.pos_emb)
            self._capture(llm, i, h_in[:, -1:], st.pos[:, -1:], st.kv, st.mask2d[:, None, :], st.groups[-1],
                          st.visual_start, st.num_visual, phase="prefill", cos_sin=last_cos_sin)  # fmt: skip

    def _score_transitions(self, st: _Prefill, i: int, sublayers: dict[str, tuple[Tensor, Tensor]]) -> None:
        """TransPrune: the method's score of layer i's transition of every visual token still kept, as a
        (B, M) map (0 for the tokens already pruned). ``sublayers``: each sublayer's (input, output) over
        the current rows, (B, S, D) each (``_sublayer_io``)."""
        with stage("select"):
            slots = _visual_slots(st)[..., None].expand(-1, -1, st.x.shape[-1])  # (B, C, D)
            visual = {name: (a.gather(1, slots), b.gather(1, slots)) for name, (a, b) in sublayers.items()}
            score = self.method.transition_score(visual)  # (B, C)
            kept = st.kept if st.kept is not None else st.visual_idx - st.visual_start[:, None]
            out = score.new_zeros(score.shape[0], st.num_visual)
            st.transition_scores[i] = out.scatter_(1, kept, score.float())

    def _finish_prefill(self, st: _Prefill) -> PrefillResult:
        llm = st.llm
        hidden = llm.model.norm(st.x)[:, -1]  # (B, D): HF norms every position; -1 is each row's last token
        logits = llm.lm_head(hidden)  # (B, V)
        if self.config.reuse is not None:
            self._remember_for_reuse(st.kv, st.relevance, st.attention_mask, st.visual_start)
        cache = AcceleratedCache(st.kv, st.groups, st.group_of_layer, st.visual_start, st.num_visual, st.capture)
        return PrefillResult(logits=logits, hidden=hidden, cache=cache, next_position=st.pos[:, -1] + 1)

    # ------------------------------------------------------------------------------------------- decode
    @torch.no_grad()
    def decode_one_token(
        self, llm: LlamaForCausalLM, token_embeds: Tensor, cache: AcceleratedCache, position_ids: Tensor
    ) -> tuple[Tensor, Tensor]:
        """token_embeds (B, 1, D), position_ids (B, 1) -> logits (B, V), hidden (B, D)."""
        plan = self.plan(llm)
        layers = llm.model.layers
        masks = []
        for g in cache.groups:
            g.mask2d = torch.cat([g.mask2d, torch.ones_like(g.mask2d[:, :1])], dim=1)  # (B, S + 1)
            masks.append(create_causal_mask(
                config=llm.config, inputs_embeds=token_embeds, attention_mask=g.mask2d,
                **cache_kwarg(create_causal_mask, cache.kv), position_ids=position_ids, layer_idx=g.first_layer,
            ))  # fmt: skip
        pos_emb = llm.model.rotary_emb(token_embeds, position_ids)
        x = token_embeds
        for i in plan.executed:
            g = cache.group_of_layer[i]
            h_in = x
            capturing = cache.capture_action and i == plan.action_layer
            # its weights kept from the layer's own call; (B, 1, S + 1): the new token sees every real one
            request = ScoreRequest(cache.groups[g].mask2d[:, None, :].bool()) if capturing else None
            with _scored(layers[i].self_attn, request) as extra:
                x = layers[i](
                    x, attention_mask=masks[g], position_embeddings=pos_emb, position_ids=position_ids,
                    **cache_kwarg(layers[i], cache.kv), use_cache=True, **extra,
                )  # fmt: skip
            if capturing:
                self._capture(llm, i, h_in, position_ids, cache.kv, request.allowed, cache.groups[g],
                              cache.visual_start, cache.num_visual, phase="decode", own=request.head_mean)  # fmt: skip
        hidden = llm.model.norm(x)[:, -1]
        return llm.lm_head(hidden), hidden

    # ----------------------------------------------------------------------------------- VLA-Cache reuse
    def _reuse_plan(self, attention_mask, visual_start, num_visual, T) -> Tensor | None:
        """(B, Q) prompt positions to compute this step, or None to compute everything."""
        if self._frame is None:
            raise ValueError(
                "vla_cache needs this step's frame: call runner.observe_frame(pixel_values, num_visual) before "
                "prefill (the policy's image encoder does)"
            )
        frame, self._frame = self._frame.to(attention_mask.device), None
        st = self._reuse_state
        self._current_patches = frame
        if frame.shape[:2] != (attention_mask.shape[0], num_visual):
            raise ValueError(f"observed frame patches {tuple(frame.shape)} do not match (B, M) = "
                             f"({attention_mask.shape[0]}, {num_visual})")  # fmt: skip
        same_layout = (
            st is not None and st.attention_mask.shape == attention_mask.shape
            and torch.equal(st.attention_mask, attention_mask) and torch.equal(st.visual_start, visual_start)
            and st.patches.shape == frame.shape
        )  # fmt: skip
        if not same_layout:
            return None  # first step of an episode, or a new prompt: nothing to reuse
        reusable = reusable_tokens(self.config.reuse, frame, st.patches, st.relevance)
        if int(reusable.sum(-1).min()) == 0:
            return None
        sim = torch.nn.functional.cosine_similarity(frame.float(), st.patches.float(), dim=-1)
        return computed_token_index(reusable, sim, visual_start, T)

    def _remember_for_reuse(self, kv, relevance, attention_mask, visual_start) -> None:
        layers = kv.layers
        keys = [layer.keys if layer.is_initialized else None for layer in layers]
        values = [layer.values if layer.is_initialized else None for layer in layers]
        self._reuse_state = _ReuseState(self._current_patches, relevance, keys, values,
                                        attention_mask.clone(), visual_start.clone())  # fmt: skip

    # -------------------------------------------------------------------------------- attention probes
    def _scores_from_layer(self, s: int) -> bool:
        """Whether stage s's scores come from the score layer's own attention (``scored_attention``): when
        its queries are all the prompt's rows, a side probe would repeat most of that layer. A few queries
        (FastV's last, the text) stay a side probe, cheaper than keeping every row's weights; so do
        FEATHER's RoPE-free keys (the layer's own are rotated) and VLA-Cache's partial rows."""
        return self.method.stage_queries(s) == "all" and getattr(self.method, "score_rope", True)

    def _prompt_scores(self, llm, layer_idx, h_in, q_pos, q_index, chosen, kv, key_mask, key_index,
                       visual_slots, head_mean: Tensor | None, pos_emb: tuple[Tensor, Tensor]) -> Tensor:
        """(B, C): mean over the chosen queries of their head-averaged attention to each visual token.

        h_in (B, S, D) the layer's input rows, q_pos / q_index (B, S) their RoPE positions and prompt
        indices, chosen (B, S) bool; the layer's cached keys (B, H, K, hd), key_mask / key_index (B, K)
        their padding mask and prompt indices (causality), visual_slots (B, C) the cache slots of the
        visual tokens scored (all M before any pruning, the kept ones at a later stage)."""
        counts = chosen.sum(-1)
        n_q = int(counts.max())
        if n_q == 0:
            raise ValueError("no query tokens of the requested kind in the prompt to score the visual tokens by")
        if head_mean is not None and n_q == chosen.shape[1] and int(counts.min()) == n_q:
            # every row of every prompt a query (VLA-Pruner's "all", no padding): the rows below would be
            # the identity and the weights all 1, so the same sums, without the ~15 small ops of the gather
            self.stats.attention_probes.append(("prefill:own", layer_idx, n_q))
            to_visual = head_mean.gather(2, visual_slots[:, None, :].expand(-1, n_q, -1))  # (B, S, C)
            return to_visual.sum(1) / n_q
        rows = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :n_q]  # (B, Q) chosen first
        q_w = chosen.gather(1, rows).float()  # (B, Q) 1 for a real chosen query, 0 for row padding
        if head_mean is not None:  # the layer's own attention, every row a query: its chosen rows
            probs = head_mean.gather(1, rows[..., None].expand(-1, -1, head_mean.shape[-1]))
        else:
            probs = self._side_probe(llm, layer_idx, h_in, q_pos, q_index, rows, kv, key_mask, key_index, pos_emb)
        self.stats.attention_probes.append(("prefill" if head_mean is None else "prefill:own", layer_idx, n_q))
        to_visual = probs.gather(2, visual_slots[:, None, :].expand(-1, n_q, -1))  # (B, Q, C)
        return (to_visual * q_w[..., None]).sum(1) / q_w.sum(1, keepdim=True).clamp_min(1.0)

    def _side_probe(self, llm, layer_idx, h_in, q_pos, q_index, rows, kv, key_mask, key_index, pos_emb) -> Tensor:
        """(B, Q, K) the head-averaged attention of the query ``rows`` (B, Q), recomputed from the layer;
        ``pos_emb``: the rows' (cos, sin), (B, S, hd) each (the layer group's own)."""
        h_q = h_in.gather(1, rows[..., None].expand(-1, -1, h_in.shape[-1]))
        rope = getattr(self.method, "score_rope", True)  # FEATHER scores without RoPE: keys from the rows
        layer = llm.model.layers[layer_idx]
        keys = kv.layers[layer_idx].keys if rope else unrotated_keys(layer, h_in)  # (B, H_kv, K, hd)
        q_idx = q_index.gather(1, rows)
        allowed = (key_index[:, None, :] <= q_idx[..., None]) & key_mask.bool()[:, None, :]  # causal + padding
        cos_sin = tuple(t.gather(1, rows[..., None].expand(-1, -1, t.shape[-1])) for t in pos_emb)
        return query_attention(layer, llm.model.rotary_emb, h_q, q_pos.gather(1, rows), keys, allowed, rope,
                               cos_sin)  # fmt: skip

    def _capture(self, llm, layer_idx, h_q, q_pos, kv, allowed, group, visual_start, num_visual, phase,
                 own: Tensor | None = None, cos_sin=None) -> None:
        """Record one action query's attention to the visual tokens, (B, M): the method's work, so "select".
        ``own`` (B, 1, S): the query's head-averaged weights kept from the layer's own attention; else a
        side probe recomputes them."""
        with stage("select"):
            self.stats.attention_probes.append((phase if own is None else f"{phase}:own", layer_idx, 1))
            if own is None:
                own = query_attention(llm.model.layers[layer_idx], llm.model.rotary_emb, h_q, q_pos,
                                      kv.layers[layer_idx].keys, allowed.bool(), cos_sin=cos_sin)  # fmt: skip
            self._record_action_attention(own[:, 0], group, visual_start, num_visual)

    def _record_action_attention(self, probs: Tensor, group, visual_start, num_visual) -> None:
        """probs (B, S) over this layer's cache -> (B, M) with the tokens absent from it (pruned before it)
        at 0; a layer before K still sees them, and ``end_step`` zeroes them."""
        n_prompt = group.token_index.shape[1]
        if group.visual_slots is None:  # the same for the 7 captures of a step: computed once
            m = group.token_index - visual_start[:, None]  # (B, S_prompt) visual index of each cached slot
            group.visual_slots = (m.clamp(0, num_visual - 1), (m >= 0) & (m < num_visual))
        slot, is_visual = group.visual_slots
        out = probs.new_zeros(probs.shape[0], num_visual)
        out.scatter_add_(1, slot, probs[:, :n_prompt] * is_visual)
        self._step_action_attention.append(out)


def _chosen_queries(which: str, mask2d: Tensor, text_mask: Tensor) -> Tensor:
    """(B, S) bool: the score queries among the current rows (before any pruning, so S = T)."""
    real = mask2d.bool()
    if which == "last":
        chosen = torch.zeros_like(real)
        chosen[:, -1] = True
        return chosen
    if which == "text":
        return text_mask.bool() & real
    if which == "all":
        return real
    raise ValueError(f"score_queries must be one of ['last', 'text', 'all'], got {which!r}")


# ---------------------------------------------------------------------------------------- helpers
def _visual_slots(st: _Prefill) -> Tensor:
    """(B, C) the current rows of the visual tokens still kept (all M before the first stage)."""
    if st.kept is None:
        return st.visual_idx
    return torch.searchsorted(st.token_index, st.visual_start[:, None] + st.kept)


def _stage_budgets(method: PruningMethod, num_visual: int, budget: int, n_stages: int) -> tuple[int, ...]:
    """The method's M~ per stage, checked: one per stage, non-increasing, within [1, M], the last = the
    config's budget."""
    budgets = tuple(int(b) for b in method.stage_budgets(num_visual, budget))
    ok = len(budgets) == n_stages and budgets[-1] == budget and all(1 <= b <= num_visual for b in budgets)
    if not ok or any(b > a for a, b in zip(budgets, budgets[1:])):
        raise ValueError(f"{method.name}: stage budgets {list(budgets)} must be {n_stages} non-increasing "
                         f"counts in [1, {num_visual}] ending in the budget {budget}")  # fmt: skip
    return budgets


def _patch_grid(num_visual: int, cameras: int) -> tuple[int, int, int] | None:
    """(cameras, side, side) when the M visual tokens are ``cameras`` square raster grids, else None."""
    if cameras < 1 or num_visual % cameras:
        return None
    side = math.isqrt(num_visual // cameras)
    return (cameras, side, side) if side * side * cameras == num_visual else None


_UNSCORED = nullcontext({})  # reusable: the layer call as it is, no extra keyword arguments


def _scored(attn_module, request: ScoreRequest | None):
    """A context yielding the layer call's extra keyword arguments: with a request, the module's attention
    runs through ``scored_attention`` and keeps its weights in it; without one (every other layer and
    call, the hot path), a shared no-op."""
    return _UNSCORED if request is None else _routed(attn_module, request)


@contextmanager
def _routed(attn_module, request: ScoreRequest):
    with scored_call(attn_module, request):
        yield {"score_request": request}


def _prefill_request(st: _Prefill) -> ScoreRequest:
    """Keep the weights of every current row: each query sees the rows up to its own prompt index (causal
    over the original order, which pruning keeps) that are not padding -- the side probe's mask."""
    idx = st.token_index
    return ScoreRequest((idx[:, None, :] <= idx[..., None]) & st.mask2d.bool()[:, None, :])  # (B, S, S)


@contextmanager
def _sublayer_io(layer, enabled: bool):
    """Yields a dict that receives, for the next call of the decoder ``layer`` when ``enabled``, each
    sublayer's (input, output), (B, S, D) each: "attention" (input: the input RMSNorm's output; output: the
    update added to the residual) and "mlp" (likewise after the post-attention RMSNorm). Forward hooks,
    removed at once; nothing is hooked otherwise."""
    captured: dict[str, tuple[Tensor, Tensor]] = {}
    if not enabled:
        yield captured
        return

    def on_attention(module, args, kwargs, out):  # transformers calls self_attn(hidden_states=...)
        captured["attention"] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0], out[0])

    handles = [layer.self_attn.register_forward_hook(on_attention, with_kwargs=True),
               layer.mlp.register_forward_hook(lambda m, args, out: captured.__setitem__("mlp", (args[0], out)))]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def _checked_step_budget(method: PruningMethod, num_visual: int, budget: int) -> int:
    """The method's M~ for this control step (an adaptive wrapper's), checked to lie in [1, M]."""
    step = int(method.step_budget(num_visual, budget))
    if not 1 <= step <= num_visual:
        raise ValueError(f"{method.name}: step budget {step} must be in [1, {num_visual}]")
    return step


def _merge_tokens(x: Tensor, slots: Tensor, merge_into: Tensor, x_kept: Tensor, kept_rows: Tensor,
                  kept: Tensor, num_visual: int) -> Tensor:
    """SparseVLM's recycling: each kept token that candidates are merged into continues with the mean of
    their hidden states, in its own row (its original position id and KV slot); the others are unchanged.

    x (B, S, D) the rows before the cut, slots (B, C) the candidates' rows in it, merge_into (B, C) the
    visual index each candidate is merged into (-1: none, else one of ``kept``); x_kept (B, S', D) the rows
    after the cut, kept_rows (B, M~) the kept visual tokens' rows in it, kept (B, M~) their visual indices."""
    if merge_into.shape != slots.shape:
        raise ValueError(f"merge_into must be (B, C) = {tuple(slots.shape)}, got {tuple(merge_into.shape)}")
    B, D = merge_into.shape[0], x.shape[-1]
    src = x.gather(1, slots[..., None].expand(-1, -1, D)).float()  # (B, C, D)
    valid = (merge_into >= 0).float()[..., None]  # (B, C, 1)
    target = merge_into.clamp_min(0)[..., None]
    sums = src.new_zeros(B, num_visual, D).scatter_add_(1, target.expand(-1, -1, D), src * valid)
    counts = src.new_zeros(B, num_visual, 1).scatter_add_(1, target, valid)
    sums, counts = sums.gather(1, kept[..., None].expand(-1, -1, D)), counts.gather(1, kept[..., None])
    if check_values(merge_into) and int(counts.sum()) != int(valid.sum()):
        raise ValueError("merge_into names visual tokens that are not kept")
    index = kept_rows[..., None].expand(-1, -1, D)
    merged = torch.where(counts > 0, sums / counts.clamp_min(1.0), x_kept.gather(1, index).float())
    return x_kept.scatter(1, index, merged.to(x_kept.dtype))


def _zero_unkept(action: Tensor, kept: Tensor) -> Tensor:
    """(B, M) action attention with every visual token not in ``kept`` (B, M~) set to 0."""
    keep = torch.zeros_like(action, dtype=torch.bool).scatter_(1, kept.to(action.device), True)
    return action.masked_fill(~keep, 0.0)
