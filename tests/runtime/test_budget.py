"""The deadline-aware keep-ratio controller converges on fake policies whose latency is a known
function of the keep ratio, stays within its bounds, and really changes an accelerated runner's budget."""

from __future__ import annotations

import numpy as np
import pytest

from vla_accel.runtime.budget import BudgetConfig, KeepRatioController, set_keep_ratio


def drive(controller: KeepRatioController, latency_of, n: int, noise_s: float = 0.0, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    keeps = []
    for _ in range(n):
        keeps.append(controller.keep)
        controller.update(max(0.0, latency_of(controller.keep) + rng.normal(0, noise_s)))
    return keeps


def best_feasible(latency_of, cfg: BudgetConfig) -> float:
    """The largest grid keep whose true latency fits the budget (the ideal answer)."""
    grid = KeepRatioController(cfg).levels
    return float(max([k for k in grid if latency_of(k) <= cfg.budget_s], default=grid[0]))


@pytest.mark.parametrize("latency_of", [
    lambda k: 0.010 + 0.080 * k,  # affine
    lambda k: 0.015 + 0.050 * k + 0.040 * k**2,  # convex (attention's quadratic part)
    lambda k: 0.030 + 0.020 * np.sqrt(k),  # concave
], ids=["affine", "convex", "concave"])
def test_converges_near_the_largest_keep_that_meets_the_deadline(latency_of):
    cfg = BudgetConfig(target_hz=20.0, min_keep=0.1, max_keep=1.0)  # budget 45 ms
    c = KeepRatioController(cfg)
    keeps = drive(c, latency_of, 150)
    final = keeps[-1]
    assert keeps[-40:] == [final] * 40  # settled, no flapping
    assert latency_of(final) <= cfg.budget_s  # meets the deadline
    ideal = best_feasible(latency_of, cfg)
    assert ideal - 0.1 <= final <= ideal  # drops at most a few grid steps more than needed
    assert c.report()["keep_ratio"] == final


def test_settles_under_measurement_noise_without_missing_the_deadline_on_average():
    cfg = BudgetConfig(target_hz=20.0, min_keep=0.1, max_keep=1.0)
    c = KeepRatioController(cfg)
    keeps = drive(c, lambda k: 0.010 + 0.080 * k, 300, noise_s=0.0015)
    tail = keeps[-100:]
    assert max(tail) - min(tail) <= 0.05  # at most one or two grid steps of wobble
    assert 0.010 + 0.080 * float(np.mean(tail)) <= cfg.budget_s
    fit = c.report()["fit_ms"]
    assert fit["slope"] == pytest.approx(80.0, rel=0.15) and fit["intercept"] == pytest.approx(10.0, abs=2.0)


def test_stays_within_bounds():
    too_slow = KeepRatioController(BudgetConfig(target_hz=20.0, min_keep=0.25, max_keep=0.75))
    drive(too_slow, lambda k: 0.100 + 0.1 * k, 50)  # nothing fits: lowest allowed keep
    assert too_slow.keep == 0.25
    fast = KeepRatioController(BudgetConfig(target_hz=20.0, min_keep=0.25, max_keep=0.75), initial_keep=0.25)
    drive(fast, lambda k: 0.001 + 0.01 * k, 80)  # everything fits: climbs to the highest allowed keep
    assert fast.keep == 0.75


def test_follows_a_slowdown():
    c = KeepRatioController(BudgetConfig(target_hz=20.0, min_keep=0.1, max_keep=1.0, window=10))
    drive(c, lambda k: 0.010 + 0.040 * k, 60)
    assert c.keep == 0.875  # 10 + 40 k <= 45 ms: reached from above, where it may sit at the budget
    drive(c, lambda k: 0.020 + 0.080 * k, 80)  # the machine got twice as slow
    assert 0.25 <= c.keep <= 0.3125  # 20 + 80 k <= 45 ms -> k <= 0.3125


@pytest.mark.parametrize("kwargs, match", [
    ({"target_hz": 0}, "target_hz"),
    ({"target_hz": 10, "min_keep": 0.5, "max_keep": 0.4}, "min_keep"),
    ({"target_hz": 10, "margin": 1.5}, "margin"),
    ({"target_hz": 10, "hysteresis": 1.0}, "hysteresis"),
])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BudgetConfig(**kwargs)


def test_bad_latency_is_rejected():
    with pytest.raises(ValueError, match="latency"):
        KeepRatioController(BudgetConfig(target_hz=10)).update(float("nan"))


def test_set_keep_ratio_changes_the_tokens_an_accelerated_policy_keeps():
    from fixtures.tiny_models import obs, tiny_openvla

    from vla_accel.accel.accelerate import accelerate

    policy = accelerate(tiny_openvla(), "fastv", keep_ratio=1.0, prune_layer=1)
    kept = {}
    for keep in (1.0, 0.5, 0.25):
        set_keep_ratio(policy, keep)
        policy.predict_action_chunk(obs(0))
        kept[keep] = policy.runner.stats.num_tokens_after_pruning
    M = policy.config.num_visual_tokens
    assert kept[1.0] - kept[0.5] == M - round(M * 0.5)
    assert kept[1.0] - kept[0.25] == M - round(M * 0.25)
    assert policy.accel_config.pruning.keep_ratio == 0.25
    with pytest.raises(ValueError, match="no tokens"):
        set_keep_ratio(accelerate(tiny_openvla(), "none"), 0.5)
