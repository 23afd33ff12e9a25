import pytest

from vla_accel.tools.pareto import pareto_front


def test_front_of_success_vs_hz_maximises_both():
    # (success %, Hz): (90, 10) is beaten by (90, 12); (50, 30) and (95, 5) trade off
    pts = [(90, 10), (90, 12), (50, 30), (95, 5), (40, 20), (50, 25)]
    assert pareto_front(pts, maximize=(True, True)) == [1, 2, 3]


def test_front_with_a_minimised_axis():
    # (success %, FLOPs ratio): fewer FLOPs is better
    pts = [(100, 1.0), (90, 0.5), (90, 0.6), (60, 0.2), (50, 0.3)]
    assert pareto_front(pts, maximize=(True, False)) == [0, 1, 3]


def test_equal_points_are_both_kept_and_incomplete_points_never_are():
    pts = [(80, 2.0), (80, 2.0), (None, 100.0), (float("nan"), 50.0), (10, 1.0), (5, 3.0)]
    assert pareto_front(pts, maximize=(True, True)) == [0, 1, 5]  # (10, 1.0) is dominated


def test_single_point_and_empty():
    assert pareto_front([(1, 1)], maximize=(True, True)) == [0]
    assert pareto_front([], maximize=(True, True)) == []


def test_mismatched_dimensions_raise():
    with pytest.raises(ValueError, match="coordinates"):
        pareto_front([(1, 2, 3)], maximize=(True, True))
    with pytest.raises(ValueError, match="one flag per axis"):
        pareto_front([(1,)], maximize=())


def test_front_matches_brute_force_definition():
    import random

    rng = random.Random(0)
    pts = [(rng.randint(0, 10), rng.random()) for _ in range(40)]
    front = set(pareto_front(pts, maximize=(True, False)))
    for i, (s, f) in enumerate(pts):
        dominated = any(s2 >= s and f2 <= f and (s2 > s or f2 < f) for s2, f2 in pts)
        assert (i in front) == (not dominated)
