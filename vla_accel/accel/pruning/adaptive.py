"""Adaptive budgets: any pruning method, with this control step's keep ratio gated on the robot's motion.

The finding (SpecPrune-VLA, arXiv 2509.05614; ADP, arXiv 2509.22093): pruning errors hurt during fine,
slow manipulation and hardly matter while the end effector moves coarsely. So prune to the config's
budget M~ while it moves coarsely, and restore tokens (``fine_keep_ratio`` of M; 1.0 = the full visual
input, ADP's choice) for fine motion. The base method (``base`` + ``base_params``) picks the tokens as
it always does; only its budget changes from step to step.

Motion: each executed action is a 7-D delta end-effector command [dx, dy, dz, droll, dpitch, dyaw,
gripper] normalised to [-1, 1] (the policy hands it to ``runner.observe_actions`` before ``end_step``);
over one control period a delta command is the end effector's velocity up to a constant.
translation t = a[:3], rotation q = a[3:6].

mode "specprune" (SpecPrune-VLA's action-aware controller): the last executed action is fine-grained
    ("precise mode") when the translation speed ||t|| < ``threshold`` (0.4) or every translation and
    rotation component is small, max(|t_i|, |q_i|) < ``delta_threshold`` (ours: 0.1).
mode "adp" (ADP's motion gate over the last ``window`` = 2 executed actions): the mean net translation per
    step ||sum_i t_i|| / window < ``threshold`` (ours: 0.4) means fine motion (restore), otherwise coarse
    (prune to M~); until ``window`` actions exist the gate says fine.

Per episode and per batch row: the history holds one row per episode (``reset`` clears it; a forked
episode builds its own method, ``AcceleratedRunner.fork``) and each row's gate reads only its own row. The
runner prunes every row of a batch to one budget, so a batch keeps the largest budget any row asks for
(a row in fine motion is never given fewer tokens than it needs). The chosen M~ / M is what the runner
reports per step (``stats.keep_ratio``, ``call_stats()["keep_ratio"]``; 1.0 for a step kept whole).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vla_accel.accel.pruning.base import PruningMethod, SelectionContext, ratio_budget

MODES = ("adp", "specprune")


class AdaptiveBudget(PruningMethod):
    name = "adaptive"

    @dataclass(frozen=True)
    class Params:
        base: str = "text_guided"  # the method that picks the tokens (ADP ranks them by text relevance)
        base_params: Mapping[str, Any] = field(default_factory=dict)
        mode: str = "adp"
        fine_keep_ratio: float = 1.0  # keep ratio for fine motion
        window: int = 2  # adp: executed actions the gate looks at
        threshold: float = 0.4  # specprune: translation speed; adp: mean net translation per step
        delta_threshold: float = 0.1  # specprune: every |component| below it also means fine motion

        def __post_init__(self) -> None:
            if self.mode not in MODES:
                raise ValueError(f"adaptive: mode must be one of {list(MODES)}, got {self.mode!r}")
            if self.base == "adaptive":
                raise ValueError("adaptive: the base method cannot be 'adaptive' itself")
            if not 0.0 < self.fine_keep_ratio <= 1.0:
                raise ValueError(f"adaptive: fine_keep_ratio must be in (0, 1], got {self.fine_keep_ratio}")
            if int(self.window) != self.window or self.window < 1:
                raise ValueError(f"adaptive: window must be an integer >= 1, got {self.window}")
            if self.threshold < 0 or self.delta_threshold < 0:
                raise ValueError("adaptive: threshold and delta_threshold must be >= 0")
            object.__setattr__(self, "base_params", dict(self.base_params))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        from vla_accel.accel.pruning import build_method  # the registry imports this module

        self.base = build_method(self.params.base, **self.params.base_params)
        needed = self.params.window if self.params.mode == "adp" else 1
        self._history: deque[Tensor] = deque(maxlen=needed)  # (B, 6) per executed action, newest last
        self.last_fine: Tensor | None = None  # (B,) bool: each row's gate at the last step_budget

    # ------------------------------------------------------------------------------------ the gate
    def observe_actions(self, actions: Tensor) -> None:
        if actions.dim() != 3 or actions.shape[-1] < 6:
            raise ValueError("adaptive: actions must be (B, H, A>=6) delta end-effector commands, "
                             f"got {tuple(actions.shape)}")  # fmt: skip
        sizes = sorted({h.shape[0] for h in self._history} - {actions.shape[0]})
        if sizes:
            raise ValueError(f"adaptive: batch size changed from {sizes[0]} to {actions.shape[0]} within an episode; "
                             "call reset() at every episode start")  # fmt: skip
        for h in range(actions.shape[1]):  # a chunk's actions are executed one after the other
            self._history.append(actions[:, h, :6].float())
        self.base.observe_actions(actions)

    def fine_motion(self) -> Tensor | None:
        """(B,) bool per row: fine motion (restore tokens); None while the history is too short."""
        if len(self._history) < self._history.maxlen:
            return None
        if self.params.mode == "specprune":
            last = self._history[-1]  # (B, 6)
            slow = last[:, :3].norm(dim=-1) < self.params.threshold
            return slow | (last.abs().amax(-1) < self.params.delta_threshold)
        net = torch.stack(list(self._history)).sum(0)[:, :3]  # (B, 3) net translation over the window
        return net.norm(dim=-1) / self.params.window < self.params.threshold

    def step_budget(self, num_visual: int, budget: int) -> int:
        fine = self.fine_motion()
        self.last_fine = fine
        if fine is not None and not bool(fine.any()):  # every row moves coarsely: prune to M~
            return self.base.step_budget(num_visual, budget)
        return max(budget, ratio_budget(num_visual, self.params.fine_keep_ratio))

    def reset(self) -> None:
        self._history.clear()
        self.last_fine = None
        self.base.reset()

    # ------------------------------------------------------------------- the base method, unchanged
    @property
    def default_layer(self) -> int:  # type: ignore[override]
        return self.base.default_layer

    @property
    def needs_action_attention(self) -> bool:  # type: ignore[override]
        return self.base.needs_action_attention

    @property
    def score_queries(self) -> str | None:
        return self.base.score_queries

    @property
    def score_rope(self) -> bool:
        return self.base.score_rope

    @property
    def needs_visual_hidden(self) -> bool:
        return self.base.needs_visual_hidden

    @property
    def action_layer(self) -> int | None:
        return self.base.action_layer

    def wants_to_prune(self, batch_size: int) -> bool:
        return self.base.wants_to_prune(batch_size)

    def select(self, ctx: SelectionContext) -> Tensor:
        return self.base.select(ctx)

    def select_and_merge(self, ctx: SelectionContext) -> tuple[Tensor, Tensor | None]:
        return self.base.select_and_merge(ctx)

    def encoder_attention_probe(self) -> Any:
        return self.base.encoder_attention_probe()

    def stage_layers(self, first_layer: int | None, num_layers: int) -> tuple[int, ...]:
        return self.base.stage_layers(first_layer, num_layers)

    def stage_budgets(self, num_visual: int, budget: int) -> tuple[int, ...]:
        return self.base.stage_budgets(num_visual, budget)

    def stage_queries(self, stage: int) -> str | None:
        return self.base.stage_queries(stage)

    def transition_layers(self, stage_layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
        return self.base.transition_layers(stage_layers, num_layers)

    def transition_score(self, sublayers: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        return self.base.transition_score(sublayers)

    def observe_step(self, action_attention: Tensor) -> None:
        self.base.observe_step(action_attention)
