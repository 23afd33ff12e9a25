import numpy as np
import pytest
from matplotlib import image as mpimg
from fixtures.sweep_fixtures import make_sweep_dir

from vla_accel.tools.plots import plot_success_vs, write_plots
from vla_accel.tools.sweep.aggregate import aggregate


def _non_blank(path) -> bool:
    img = mpimg.imread(path)[..., :3]  # (H, W, 3) floats in [0, 1]
    colours = np.unique((img.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    return img.std() > 0.02 and len(colours) > 20


def test_both_plots_written_and_not_blank(tmp_path):
    rows = aggregate(make_sweep_dir(tmp_path / "s"))
    paths = write_plots(rows, tmp_path, title="synthetic")
    assert [p.name for p in paths] == ["success_vs_hz.png", "success_vs_flops.png"]
    for p in paths:
        assert p.stat().st_size > 20_000
        assert _non_blank(p)


def test_plot_draws_pareto_front_baseline_and_lines(tmp_path, monkeypatch):
    import matplotlib.axes

    rows = aggregate(make_sweep_dir(tmp_path / "s"))
    calls = {"errorbar": [], "scatter": []}
    real_errorbar, real_scatter = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.scatter
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, **kw: calls["errorbar"].append((list(x), list(y), kw.get("label")))
                        or real_errorbar(self, x, y, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter",
                        lambda self, x, y, **kw: calls["scatter"].append((list(x), list(y)))
                        or real_scatter(self, x, y, **kw))
    plot_success_vs(rows, "policy_hz", "Hz", True, tmp_path / "hz.png")
    labels = [c[2] for c in calls["errorbar"]]
    assert labels == ["fastv", "vla_pruner", "unaccelerated"]
    xs, ys = calls["errorbar"][1][:2]  # vla_pruner, sorted by Hz
    assert xs == pytest.approx([30.0, 40.0]) and ys == [80.0, 60.0]
    # bench Hz: none 20 @ 80%, vp0.5 30 @ 80%, fastv0.5 32 @ 70%, vp0.25 40 @ 60%, fastv0.25 44 @ 20%
    front_x, front_y = calls["scatter"][0]
    front = sorted(zip(front_x, front_y))
    assert [y for _, y in front] == [80.0, 70.0, 60.0, 20.0]
    assert [x for x, _ in front] == pytest.approx([30.0, 32.0, 40.0, 44.0])


def test_no_timing_means_no_hz_plot(tmp_path):
    rows = aggregate(make_sweep_dir(tmp_path / "s", with_bench=False))
    for r in rows:
        r.policy_hz = None
    assert [p.name for p in write_plots(rows, tmp_path)] == ["success_vs_flops.png"]
