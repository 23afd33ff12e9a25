"""``fork_episode(policy)``: a second view of a VLA policy with its OWN episode state and the SAME weights.

A policy server holds one model and many clients; each client's episode (the accelerator's temporal
pruning history and token-reuse memory, the select_action queue, CogACT's action ensemble and noise
generator, the stage timer) must be its own, while the weights must not be copied. The policy owns how
(``VLMBase.fork_episode``, policies/common/vlm.py): its runner forks itself, and the accelerator's hooks
live in the runner and the shared DiT, so nothing here needs to know them.
"""

from __future__ import annotations

from typing import Any

from vla_accel.policies.capabilities import require_runner


def fork_episode(policy: Any) -> Any:
    """A view of ``policy`` sharing every parameter and buffer, with fresh episode state (reset)."""
    return require_runner(policy, "fork_episode").fork_episode()
