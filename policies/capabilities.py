"""What a policy offers the accelerator, as Protocols: the one place "is this CogACT-style?" is asked.

- `RunnerPolicy`: the LLM runs through `policy.runner` (the LLM runner seam of policies/llm_runner.py),
  over `policy.language_model`; token pruning, layer skipping and VLA-Cache's token reuse need this.
- `DiTHeadPolicy`: a CogACT-style DiT action head (`policy.action_model`) with the feature-cache hook
  (`feature_cache`, policies/cogact/dit.py); EfficientVLA's head cache needs this.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class RunnerPolicy(Protocol):
    runner: Any
    language_model: Any

    def fork_episode(self) -> Any: ...


@runtime_checkable
class DiTHeadPolicy(Protocol):
    action_model: Any

    def sample_actions(self, cognition: Any, noise: Any = None) -> Any: ...


def has_runner(policy: Any) -> bool:
    return isinstance(policy, RunnerPolicy)


def has_dit_head(policy: Any) -> bool:
    return isinstance(policy, DiTHeadPolicy) and hasattr(policy.action_model, "feature_cache")


def require_runner(policy: Any, what: str) -> Any:
    """policy, or a ValueError naming its type when its LLM does not run through a runner."""
    if not has_runner(policy):
        raise ValueError(f"{type(policy).__name__} does not run its LLM through a runner (needs `runner`, "
                         f"`language_model` and `fork_episode`), which {what} needs")
    return policy


def require_dit_head(policy: Any, what: str, fix: str) -> Any:
    """The policy's DiT (with its feature-cache hook), or a ValueError naming the policy type and the fix."""
    if not has_dit_head(policy):
        raise ValueError(f"{what} needs a policy with a DiT action head (CogACT-style `action_model` with a "
                         f"`feature_cache` hook); {type(policy).__name__} has none -- {fix}")
    return policy.action_model
