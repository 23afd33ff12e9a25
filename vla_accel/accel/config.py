"""The accelerator's configuration: token pruning, layer skipping and action-head caching, each on/off.

Everything that can be checked without a model is checked at construction (``__post_init__``); what
needs the model's layer count (pruning layer K, skipped layer indices, the action-attention layer) is
checked by :meth:`AccelConfig.bind` / :func:`resolve_plan`.

The Hydra group ``conf/accel/<name>.yaml`` is flat (so sweeps read ``accel.keep_ratio=0.5``);
:meth:`AccelConfig.from_dict` turns it into these dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_accel.accel.pruning import method_class
from vla_accel.accel.token_reuse import TokenReuseConfig
from vla_accel.registry import unknown_name


@dataclass(frozen=True)
class TokenPruningConfig:
    """method + budget (``keep_ratio`` of the M visual tokens, or absolute ``keep_tokens``) + layer K.

    The pruning-layer convention (the one place it is defined; flops.py, the presets' ``prune_layer``
    and the methods' ``default_layer`` refer here): ``layer`` = K = the NUMBER OF LLM LAYERS THAT SEE
    EVERY TOKEN. 0-indexed, layers 0..K-1 run on the full prompt, layers K.. on the kept tokens only,
    and the attention that ranks the tokens is read at layer K-1 (the last full one). K = 0 prunes
    before the LLM. The papers count differently; each preset converts its paper's number:

    - FastV "prunes after layer K" (1-indexed, layers 1..K full): K_FastV = 2 -> ``layer = 2``.
    - VLA-Pruner prunes "at layer K = 3" with K-1 full layers (its FLOPs ratio
      r = [(K-1) C(n) + (T-K+1) C(n~)] / (T C(n))): K_paper = 3 -> ``layer = K_paper - 1 = 2``.
    - DivPrune and the controls prune before the LLM: ``layer = 0``.
    - text_guided and efficientvla_tokens: ../shared/methods.md gives no layer; they keep ``layer = 3``.
    - TransPrune's released code prunes after layers 7, 9 and 12 (1-indexed) of 32: stages K = 7, 9, 12
      (``layer`` = K_1 = 7), each reading IGA at K-1 and TTV of the layers before K.
    - ``adaptive`` wraps a base method and answers that method's layers.

    A budget larger than the policy's M is refused by ``accelerate()`` (it knows M); :meth:`budget`
    refuses it again for any other caller.
    """

    method: str
    keep_ratio: float | None = None
    keep_tokens: int | None = None
    layer: int | None = None  # K = number of layers that see every token (see above); None -> method default
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cls = method_class(self.method)  # unknown method -> ValueError with did-you-mean
        if self.keep_tokens is not None:
            if self.keep_ratio is not None:
                raise ValueError("token pruning: give keep_ratio or keep_tokens, not both")
            if int(self.keep_tokens) != self.keep_tokens or self.keep_tokens < 1:
                raise ValueError(f"token pruning: keep_tokens must be a positive integer, got {self.keep_tokens}")
        elif self.keep_ratio is None:
            raise ValueError("token pruning: one of keep_ratio or keep_tokens is required")
        elif not 0.0 < float(self.keep_ratio) <= 1.0:
            raise ValueError(f"token pruning: keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.layer is not None and (int(self.layer) != self.layer or self.layer < 0):
            raise ValueError(f"token pruning: layer must be a non-negative integer, got {self.layer}")
        cls(**dict(self.params))  # unknown or invalid method parameters fail here, not mid-episode
        object.__setattr__(self, "params", dict(self.params))

    @property
    def prune_layer(self) -> int:
        # from an instance: a wrapper method (``adaptive``) answers its base method's default
        return self.layer if self.layer is not None else method_class(self.method)(**self.params).default_layer

    def budget(self, num_visual: int) -> int:
        """M~ for M = num_visual visual tokens: round(M * keep_ratio) (at least 1), or keep_tokens."""
        if self.keep_tokens is not None:
            if self.keep_tokens > num_visual:
                raise ValueError(
                    f"token pruning: keep_tokens={self.keep_tokens} exceeds the {num_visual} visual tokens"
                )
            return int(self.keep_tokens)
        return max(1, min(num_visual, round(num_visual * float(self.keep_ratio))))


@dataclass(frozen=True)
class LayerSkipConfig:
    """Layers never entered: an explicit list, or the ``num_drop`` least important of a ranking file
    written by :func:`vla_accel.accel.layer_skip.calibrate_layer_skip`."""

    layers: tuple[int, ...] = ()
    ranking_file: str | None = None
    num_drop: int = 0

    def __post_init__(self) -> None:
        layers = tuple(int(x) for x in self.layers)
        if any(x < 0 for x in layers):
            raise ValueError(f"layer skip: layer indices must be >= 0, got {list(layers)}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer skip: duplicate layer indices in {list(layers)}")
        if self.num_drop < 0:
            raise ValueError(f"layer skip: num_drop must be >= 0, got {self.num_drop}")
        if layers and self.ranking_file:
            raise ValueError("layer skip: give an explicit layer list or a ranking file, not both")
        if self.num_drop and not self.ranking_file:
            raise ValueError("layer skip: num_drop needs a ranking_file")
        object.__setattr__(self, "layers", layers)

    def resolve(self, num_layers: int) -> tuple[int, ...]:
        """The skipped layer indices for a model with ``num_layers`` layers, sorted."""
        if self.ranking_file:
            ranking = json.loads(Path(self.ranking_file).read_text())
            if ranking.get("num_layers") != num_layers:
                raise ValueError(
                    f"layer skip: ranking file {self.ranking_file} is for {ranking.get('num_layers')} layers, "
                    f"the model has {num_layers}"
                )
            layers = tuple(ranking["ranking"][: self.num_drop])
        else:
            layers = self.layers
        bad = [x for x in layers if x >= num_layers]
        if bad:
            raise ValueError(f"layer skip: layers {bad} do not exist in a {num_layers}-layer model")
        if len(layers) >= num_layers:
            raise ValueError(f"layer skip: cannot skip all {num_layers} layers")
        return tuple(sorted(layers))


@dataclass(frozen=True)
class HeadCacheConfig:
    """Diffusion action-head cache: recompute the DiT's attention/MLP outputs every ``interval`` steps."""

    interval: int = 5

    def __post_init__(self) -> None:
        if int(self.interval) != self.interval or self.interval < 1:
            raise ValueError(f"head cache: interval must be an integer >= 1, got {self.interval}")


@dataclass(frozen=True)
class AccelConfig:
    """Each part is off when None. ``reuse`` (VLA-Cache) and ``pruning`` exclude each other."""

    pruning: TokenPruningConfig | None = None
    layer_skip: LayerSkipConfig | None = None
    head_cache: HeadCacheConfig | None = None
    reuse: TokenReuseConfig | None = None

    def __post_init__(self) -> None:
        if self.pruning is not None and self.reuse is not None:
            raise ValueError(
                "token pruning and VLA-Cache token reuse cannot be combined: reuse copies the K/V of the full "
                "visual sequence from the previous step; choose one (method=null or reuse=null)"
            )

    @property
    def is_off(self) -> bool:
        return self.pruning is None and self.layer_skip is None and self.head_cache is None and self.reuse is None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AccelConfig:
        """From the flat Hydra ``accel`` group: method, keep_ratio, keep_tokens, prune_layer, params,
        skip_layers, skip_ranking_file, skip_num_drop, head_cache_interval, reuse (a mapping of
        TokenReuseConfig's fields, or null); unknown keys raise."""
        d = dict(d or {})
        d.pop("name", None)
        known = {
            "method", "keep_ratio", "keep_tokens", "prune_layer", "params",
            "skip_layers", "skip_ranking_file", "skip_num_drop", "head_cache_interval", "reuse",
        }  # fmt: skip
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"accel config: unknown key(s) {unknown}; valid: {sorted(known)}")
        pruning = None
        if d.get("method"):
            pruning = TokenPruningConfig(
                method=d["method"],
                keep_ratio=d.get("keep_ratio"),
                keep_tokens=d.get("keep_tokens"),
                layer=d.get("prune_layer"),
                params=dict(d.get("params") or {}),
            )
        skip = None
        if d.get("skip_layers") or d.get("skip_ranking_file"):
            skip = LayerSkipConfig(
                layers=tuple(d.get("skip_layers") or ()),
                ranking_file=d.get("skip_ranking_file"),
                num_drop=int(d.get("skip_num_drop") or 0),
            )
        head = None
        if d.get("head_cache_interval") not in (None, 1):
            head = HeadCacheConfig(interval=d["head_cache_interval"])
        reuse = None
        if d.get("reuse") is not None:
            reuse_keys = set(TokenReuseConfig.__dataclass_fields__)
            bad = sorted(set(d["reuse"]) - reuse_keys)
            if bad:
                raise ValueError(f"accel config: unknown reuse key(s) {bad}; valid: {sorted(reuse_keys)}")
            reuse = TokenReuseConfig(**d["reuse"])
        return cls(pruning=pruning, layer_skip=skip, head_cache=head, reuse=reuse)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LayerPlan:
    """The config resolved against a model with ``num_layers`` layers.

    executed:     the layers entered, in order
    prune_layer:  K, the first layer (index in the unskipped model) that sees only kept tokens; None = off
    score_layer:  the executed layer whose attention ranks the tokens (the last executed layer before K)
    action_layer: the layer whose attention to the visual tokens is captured for the action score, or None
    relevance_layer: the layer whose text -> vision attention marks VLA-Cache's task-relevant tokens, or None
    stage_layers: K of every pruning stage (multi-stage methods: FEATHER, ToDRE, TransPrune), ascending;
                  ``prune_layer`` is the first
    score_layers: per stage, the executed layer its attention is read at (the last executed one before
                  K_s), or None for a stage that reads no LLM attention
    transition_layers: the layers whose visual-token transitions the method scores (TransPrune)
    """

    num_layers: int
    executed: tuple[int, ...]
    prune_layer: int | None
    score_layer: int | None
    action_layer: int | None
    relevance_layer: int | None = None
    stage_layers: tuple[int, ...] = ()
    score_layers: tuple[int | None, ...] = ()
    transition_layers: tuple[int, ...] = ()


def resolve_plan(config: AccelConfig, num_layers: int) -> LayerPlan:
    """Bind ``config`` to a model with ``num_layers`` layers; every layer index is checked here."""
    skipped = config.layer_skip.resolve(num_layers) if config.layer_skip else ()
    executed = tuple(x for x in range(num_layers) if x not in skipped)
    prune_layer = score_layer = action_layer = relevance_layer = None
    stages: dict = {}
    if config.pruning is not None:
        stages = _pruning_layers(config.pruning, num_layers, skipped, executed)
        prune_layer, score_layer = stages["stage_layers"][0], stages["score_layers"][0]
        action_layer = stages.pop("action_layer")
    if config.reuse is not None:
        relevance_layer = config.reuse.relevance_layer
        if relevance_layer is None:
            relevance_layer = _middle_layer(num_layers)
        if relevance_layer >= num_layers or relevance_layer in skipped:
            raise ValueError(
                f"vla_cache: relevance_layer={relevance_layer} must be an executed layer of the "
                f"{num_layers}-layer model"
            )
    return LayerPlan(num_layers, executed, prune_layer, score_layer, action_layer, relevance_layer, **stages)


def _middle_layer(num_layers: int) -> int:
    return max(0, num_layers // 2 - 1)  # layer 15 of 32, where VLA-Pruner's and VLA-Cache's code read attention


def _pruning_layers(pruning: TokenPruningConfig, num_layers: int, skipped, executed) -> dict:
    """{stage_layers, score_layers, transition_layers, action_layer}, validated. Each stage s prunes
    before layer K_s; one that ranks by attention reads it at the last executed layer before K_s."""
    cls = method_class(pruning.method)
    method = cls(**pruning.params)
    ks = tuple(int(k) for k in method.stage_layers(pruning.layer, num_layers))
    if any(b <= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"token pruning: {pruning.method!r} stage layers {list(ks)} must be strictly increasing")
    for k in ks:
        if k >= num_layers:
            raise ValueError(f"token pruning: layer K={k} is beyond the model's {num_layers} layers "
                             f"(valid 0..{num_layers - 1})")  # fmt: skip
    if not any(x >= ks[-1] for x in executed):
        raise ValueError(f"token pruning: every layer from K={ks[-1]} on is skipped; nothing would run pruned")
    score_layers = tuple(_score_layer(pruning.method, method.stage_queries(s), k, ks[s - 1] if s else 0,
                                      skipped, executed) for s, k in enumerate(ks))  # fmt: skip
    action_layer = _action_layer(method, ks[0], num_layers, skipped, executed) if method.needs_action_attention else None
    transitions = tuple(method.transition_layers(ks, num_layers))
    bad = [x for x in transitions if x >= num_layers or x in skipped]
    if bad:
        raise ValueError(f"token pruning: transition layers {bad} are not executed layers of the {num_layers}-layer model")
    return {"stage_layers": ks, "score_layers": score_layers, "transition_layers": transitions,
            "action_layer": action_layer}  # fmt: skip


def _score_layer(method: str, queries, k: int, previous_k: int, skipped, executed) -> int | None:
    """The layer stage K=k reads its attention at: K-1, which must be executed (and, for a later stage,
    after the previous stage's K, so that it sees only that stage's tokens)."""
    if queries is None:
        return None
    if k == 0:
        raise ValueError(f"token pruning: {method!r} ranks tokens by the attention at layer K-1, so K must be >= 1")
    if k - 1 in skipped:
        raise ValueError(
            f"token pruning: the scores are read at layer K-1={k - 1}, which is skipped; "
            "choose another K or keep that layer"
        )
    if previous_k and k - 1 < previous_k:
        raise ValueError(f"token pruning: {method!r} stage at K={k} reads layer {k - 1}, before the previous "
                         f"stage's K={previous_k}")  # fmt: skip
    return k - 1


def _action_layer(method, k: int, num_layers: int, skipped, executed) -> int:
    """The layer read for the action score. Default: max(K, num_layers // 2 - 1) -- layer 15 of 32 as in
    VLA-Pruner's code, but never before K, so that it sees only the kept tokens in any depth (in a
    6-layer model 6 // 2 - 1 = 2 < K would score tokens pruned at that step) -- clipped to the last
    executed layer. An explicit layer before K is accepted: the runner zeroes the pruned tokens' scores
    before they enter the history (the paper's rule), which makes such a layer valid, only not faster."""
    action_layer = method.action_layer
    if action_layer is None:
        action_layer = min(max(k, _middle_layer(num_layers)), executed[-1])
    if action_layer >= num_layers:
        raise ValueError(f"token pruning: action_layer={action_layer} is beyond the model's {num_layers} layers")
    if action_layer in skipped:
        raise ValueError(f"token pruning: action_layer={action_layer} is skipped; choose a kept layer")
    return action_layer


def load_accel_config(name: str, **overrides: Any) -> AccelConfig:
    """The packaged preset ``conf/accel/<name>.yaml`` with flat overrides, e.g.
    ``load_accel_config("vla_pruner", keep_ratio=0.25)``. Unknown presets list the valid ones."""
    from vla_accel.accel.preset_config import load_preset, preset_names

    presets = preset_names()
    if name not in presets:
        raise unknown_name(name, presets, "accel preset")
    d = load_preset(name)  # the preset as Hydra composes it (its schema's defaults + the file)
    if "keep_tokens" in overrides and "keep_ratio" not in overrides:
        d["keep_ratio"] = None  # an absolute budget replaces the preset's ratio
    d.update(overrides)
    return AccelConfig.from_dict(d)
