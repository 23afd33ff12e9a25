"""The accelerated LLM runner: one explicit loop over the Llama's own modules (gpt-fast style).

Same four methods as ``vla_accel.policies.llm_runner.HFRunner`` (docs/interfaces.md, "The LLM runner
seam"), so a policy cannot tell them apart except by speed:

prefill
    runs the executed layers (skipped layers are never entered). At the score layer K-1 it computes the
    head-averaged attention of ONLY the queries the pruning method asks for (``query_attention``; every
    layer itself keeps SDPA). Before layer K it gathers each row's kept tokens -- every non-visual token
    plus the method's M~ visual tokens, in their original order and with their ORIGINAL position ids --
    and runs layers K.. on that shorter sequence, so their KV-cache entries hold only kept tokens while
    layers < K hold the full prompt (transformers' DynamicCache keeps one tensor per layer, and each
    group of layers gets its own padding mask).
decode_one_token
    one new token through the same layers, each group's mask extended by one.
action attention
    for methods that need it (VLA-Pruner), the attention the action queries pay the visual tokens at
    ``action_layer``: the last prefill query (OpenVLA's first action token / CogACT's cognition token)
    and every decoded query of the step; their mean, as a (B, M) map with the tokens not kept at this
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
from contextlib import contextmanager
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
from vla_accel.policies.common.prompt import positions_from_mask
from vla_accel.policies.llm_runner import PrefillResult
from vla_accel.accel.pruning import PruningMethod, SelectionContext, build_method
from vla_accel.accel.checks import check_prompt, check_selection
from vla_accel.accel.query_attention import query_attention, unrotated_keys
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
    attention_probes: list[tuple[str, int, int]] = field(default_factory=list)  # (phase, layer, n_queries)


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

    def end_step(self) -> None:
        if self.method is not None and self.method.needs_action_attention and self._step_action_attention:
            with stage("select"):
                action = torch.stack(self._step_action_attention).mean(0)  # (B, M)
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
        budget = self.config.pruning.budget(num_visual) if method is not None else num_visual
        device = inputs_embeds.device
        visual_idx = visual_start[:, None] + torch.arange(num_visual, device=device)  # (B, M)
        st = _Prefill(
            llm=llm, plan=self.plan(llm), attention_mask=attention_mask, visual_start=visual_start,
            num_visual=num_visual, text_mask=text_mask, budget=budget,
            prune=method is not None and budget < num_visual and method.wants_to_prune(B),
            capture=method is not None and method.needs_action_attention and budget < num_visual,
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
        ctx = SelectionContext(
            visual_embeds=st.visual_embeds, visual_attention=st.scores, budget=budget, stage=s,
            candidates=st.kept, encoder_attention=st.encoder_attention,
            transition_scores=dict(st.transition_scores), grid=st.grid,
        )  # fmt: skip
        with stage("select"):
            kept = check_selection(self.method.select(ctx), B, budget, st.num_visual, st.kept)  # (B, M~_s)
        keep_index = _kept_token_index(T, st.visual_start, st.num_visual, kept)  # (B, T') prompt indices
        # the current rows are sorted prompt indices (st.token_index), so each kept one's row is found by search
        rows = keep_index if st.kept is None else torch.searchsorted(st.token_index, keep_index)
        st.x = st.x.gather(1, rows[..., None].expand(-1, -1, st.x.shape[-1]))
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
        with _attention_output(llm.model.layers[i].self_attn, track) as attn_out:
            st.x = llm.model.layers[i](
                st.x, attention_mask=st.causal, position_embeddings=st.pos_emb, position_ids=st.pos,
                **cache_kwarg(llm.model.layers[i], st.kv), use_cache=True,
            )  # fmt: skip
        if track:
            self._score_transitions(st, i, h_in, attn_out[0])
        s = st.next_stage
        if st.prune and s < len(plan.stage_layers) and i == plan.score_layers[s]:
            with stage("select"):
                text = st.text_mask.gather(1, st.token_index)
                chosen = _chosen_queries(self.method.stage_queries(s), st.mask2d, text)
                st.scores = self._prompt_scores(llm, i, h_in, st.pos, st.token_index, chosen, st.kv, st.mask2d,
                                                st.token_index, _visual_slots(st))  # fmt: skip
        if i == plan.relevance_layer:
            real = st.attention_mask.bool().gather(1, st.token_index)
            chosen = st.text_mask.bool().gather(1, st.token_index) & real
            all_keys = torch.arange(st.attention_mask.shape[1], device=h_in.device).expand_as(st.attention_mask)
            st.relevance = self._prompt_scores(llm, i, h_in, st.pos, st.token_index, chosen, st.kv,
                                               st.attention_mask, all_keys, st.visual_idx)  # fmt: skip
        if st.capture and i == plan.action_layer:
            self._capture(llm, i, h_in[:, -1:], st.pos[:, -1:], st.kv, st.mask2d[:, None, :], st.groups[-1],
                          st.visual_start, st.num_visual, phase="prefill")  # fmt: skip

    def _score_transitions(self, st: _Prefill, i: int, h_in: Tensor, attn_update: Tensor) -> None:
        """TransPrune: the method's score of layer i's transition of every visual token still kept, as a
        (B, M) map (0 for the tokens already pruned)."""
        with stage("select"):
            slots = _visual_slots(st)[..., None].expand(-1, -1, h_in.shape[-1])  # (B, C, D)
            score = self.method.transition_score(h_in.gather(1, slots), attn_update.gather(1, slots),
                                                 st.x.gather(1, slots))  # (B, C)  # fmt: skip
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
            x = layers[i](
                x, attention_mask=masks[g], position_embeddings=pos_emb, position_ids=position_ids,
                **cache_kwarg(layers[i], cache.kv), use_cache=True,
            )  # fmt: skip
            if cache.capture_action and i == plan.action_layer:
                group = cache.groups[g]
                self._capture(llm, i, h_in, position_ids, cache.kv, group.mask2d[:, None, :].bool(), group,
                              cache.visual_start, cache.num_visual, phase="decode")  # fmt: skip
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
    def _prompt_scores(self, llm, layer_idx, h_in, q_pos, q_index, chosen, kv, key_mask, key_index,
                       visual_slots) -> Tensor:
        """(B, C): mean over the chosen queries of their head-averaged attention to each visual token.

        h_in (B, S, D) the layer's input rows, q_pos / q_index (B, S) their RoPE positions and prompt
        indices, chosen (B, S) bool; the layer's cached keys (B, H, K, hd), key_mask / key_index (B, K)
        their padding mask and prompt indices (causality), visual_slots (B, C) the cache slots of the
        visual tokens scored (all M before any pruning, the kept ones at a later stage)."""
        n_q = int(chosen.sum(-1).max())
        if n_q == 0:
            raise ValueError("no query tokens of the requested kind in the prompt to score the visual tokens by")
        rows = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :n_q]  # (B, Q) chosen first
        q_w = chosen.gather(1, rows).float()  # (B, Q) 1 for a real chosen query, 0 for row padding
        h_q = h_in.gather(1, rows[..., None].expand(-1, -1, h_in.shape[-1]))
        rope = getattr(self.method, "score_rope", True)  # FEATHER scores without RoPE: keys from the rows
        layer = llm.model.layers[layer_idx]
        keys = kv.layers[layer_idx].keys if rope else unrotated_keys(layer, h_in)  # (B, H_kv, K, hd)
        q_idx = q_index.gather(1, rows)
        allowed = (key_index[:, None, :] <= q_idx[..., None]) & key_mask.bool()[:, None, :]  # causal + padding
        probs = query_attention(layer, llm.model.rotary_emb, h_q, q_pos.gather(1, rows), keys, allowed, rope)
        self.stats.attention_probes.append(("prefill", layer_idx, n_q))
        to_visual = probs.gather(2, visual_slots[:, None, :].expand(-1, n_q, -1))  # (B, Q, C)
        return (to_visual * q_w[..., None]).sum(1) / q_w.sum(1, keepdim=True).clamp_min(1.0)

    def _capture(self, llm, layer_idx, h_q, q_pos, kv, allowed, group, visual_start, num_visual, phase) -> None:
        """Record one action query's attention to the visual tokens, (B, M): the method's work, so "select"."""
        with stage("select"):
            self._capture_probe(llm, layer_idx, h_q, q_pos, kv, allowed, group, visual_start, num_visual, phase)

    def _capture_probe(self, llm, layer_idx, h_q, q_pos, kv, allowed, group, visual_start, num_visual, phase):
        """(B, M) with the tokens absent from this layer's cache (pruned before it) at 0; a layer before K
        still sees them, and ``end_step`` zeroes them."""
        probs = query_attention(llm.model.layers[layer_idx], llm.model.rotary_emb, h_q, q_pos,
                                kv.layers[layer_idx].keys, allowed.bool())[:, 0]  # (B, S)  # fmt: skip
        self.stats.attention_probes.append((phase, layer_idx, 1))
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


@contextmanager
def _attention_output(attn_module, enabled: bool):
    """Yields a list that receives the attention sublayer's output (B, S, D) of the next call when
    ``enabled`` (a forward hook, removed at once); nothing is hooked otherwise."""
    captured: list[Tensor] = []
    if not enabled:
        yield captured
        return
    handle = attn_module.register_forward_hook(lambda module, args, out: captured.append(out[0]))
    try:
        yield captured
    finally:
        handle.remove()


def _zero_unkept(action: Tensor, kept: Tensor) -> Tensor:
    """(B, M) action attention with every visual token not in ``kept`` (B, M~) set to 0."""
    keep = torch.zeros_like(action, dtype=torch.bool).scatter_(1, kept.to(action.device), True)
    return action.masked_fill(~keep, 0.0)


def _kept_token_index(T: int, visual_start: Tensor, num_visual: int, kept: Tensor) -> Tensor:
    """(B, T - M + M~) long: every non-visual prompt index plus the kept visual ones, ascending."""
    B = kept.shape[0]
    keep = torch.ones(B, T, dtype=torch.bool, device=kept.device)
    visual = visual_start[:, None] + torch.arange(num_visual, device=kept.device)
    keep.scatter_(1, visual, False)
    keep.scatter_(1, visual_start[:, None] + kept, True)
    return keep.nonzero()[:, 1].view(B, -1)  # row-major nonzero: each row's indices ascending
