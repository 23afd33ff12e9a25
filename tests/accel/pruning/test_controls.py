import torch

from vla_accel.accel.pruning import SelectionContext, build_method
from vla_accel.accel.pruning.uniform import even_raster_indices


def test_uniform_spreads_over_the_grid():
    assert even_raster_indices(16, 4).tolist() == [2, 6, 10, 14]
    idx = even_raster_indices(256, 32)
    assert idx.unique().numel() == 32 and int(idx.min()) >= 0 and int(idx.max()) < 256
    rows = (idx // 16).tolist()
    assert sorted(set(rows)) == list(range(16))  # every image row band is represented
    kept = build_method("uniform").select(SelectionContext(torch.randn(3, 16, 4), None, 4))
    assert kept.tolist() == [[2, 6, 10, 14]] * 3


def test_random_is_seeded_per_episode_and_differs_per_row():
    m = build_method("random", seed=7)
    c = SelectionContext(torch.randn(2, 64, 4), None, 8)
    a = m.select(c)
    b = m.select(c)
    assert not torch.equal(a, b)  # a new draw every step
    assert not torch.equal(a[0], a[1])
    m.reset()
    assert torch.equal(m.select(c), a)  # reset -> the episode's draws repeat
    assert (a[:, 1:] > a[:, :-1]).all()
