import math

import pytest

from vla_accel.measure.stats import format_pc, format_rate, success_metrics, wilson_interval

Z = 1.959963984540054  # two-sided 95% normal quantile


def test_wilson_all_failures_by_hand():
    # k = 0: lower bound 0, upper bound z^2 / (n + z^2)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(Z**2 / (10 + Z**2), abs=1e-12)
    assert hi == pytest.approx(0.27753, abs=1e-5)


def test_wilson_all_successes_mirrors_all_failures():
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0
    assert lo == pytest.approx(10 / (10 + Z**2), abs=1e-12)
    assert lo == pytest.approx(0.72247, abs=1e-5)


def test_wilson_half_by_hand():
    # p = 0.5, n = 10: centre 0.5, half-width z * sqrt(0.025 + z^2/400) / (1 + z^2/10)
    half = Z * math.sqrt(0.025 + Z**2 / 400) / (1 + Z**2 / 10)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert (lo, hi) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))


def test_wilson_one_of_twenty_known_value():
    # Published example (Newcombe 1998, table I style): 1/20 -> [0.0089, 0.2361]
    lo, hi = wilson_interval(1, 20)
    assert lo == pytest.approx(0.00889, abs=1e-4)
    assert hi == pytest.approx(0.23613, abs=1e-4)


def test_wilson_narrows_with_more_trials_and_higher_confidence_widens():
    w10 = wilson_interval(5, 10)
    w100 = wilson_interval(50, 100)
    assert (w100[1] - w100[0]) < (w10[1] - w10[0])
    w99 = wilson_interval(5, 10, confidence=0.99)
    assert w99[0] < w10[0] and w99[1] > w10[1]


@pytest.mark.parametrize("k,n", [(0, 0), (-1, 5), (6, 5)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_success_metrics_in_percent():
    m = success_metrics(5, 10)
    assert m["pc_success"] == 50.0 and m["n_episodes"] == 10 and m["n_success"] == 5
    assert m["ci95"] == [pytest.approx(23.659, abs=1e-3), pytest.approx(76.341, abs=1e-3)]


def test_formatting():
    assert format_pc(87.5) == "87.5%"
    assert format_pc(100, digits=0) == "100%"
    assert format_rate(success_metrics(0, 10)) == "0.0% [0.0, 27.8]"
