import torch

from vla_accel.accel.pruning import SelectionContext, build_method
from vla_accel.accel.pruning.diversity import cosine_distance, greedy_max_min


def test_divprune_picks_one_token_per_direction_cluster():
    # 3 tight clusters of 4 near-identical directions: a diverse pick of 3 takes one from each
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 6) * 5
    embeds = (centres.repeat_interleave(4, 0) + 0.01 * torch.randn(12, 6, generator=g))[None]  # (1, 12, 6)
    kept = build_method("divprune").select(SelectionContext(embeds, None, 3))
    assert sorted(k // 4 for k in kept[0].tolist()) == [0, 1, 2]
    assert build_method("divprune").default_layer == 0 and build_method("divprune").score_queries is None


def test_greedy_max_min_first_pick_is_the_most_isolated_token_then_max_min():
    # 2-D directions at angles (degrees): a cluster near 0, one at 90 (isolated), one at 180
    angles = torch.tensor([0.0, 5.0, 10.0, 90.0, 180.0, 175.0]) * torch.pi / 180
    v = torch.stack([angles.cos(), angles.sin()], -1)[None]  # (1, 6, 2)
    d = cosine_distance(v)[0]
    nn = (d + torch.eye(6) * 9).min(-1).values
    assert int(nn.argmax()) == 3  # 90 degrees has the farthest nearest neighbour
    kept = greedy_max_min(v, 3)
    assert kept.tolist() == [[0, 3, 4]]  # then the token farthest from 90 (0 or 180 tie-break by min dist)


def test_greedy_max_min_respects_candidates_and_is_per_row():
    v = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(3))
    cand = torch.zeros(2, 10, dtype=torch.bool)
    cand[0, [1, 4, 7, 8]] = True
    cand[1, [0, 2, 3, 9]] = True
    kept = greedy_max_min(v, 4, candidates=cand)
    assert kept.tolist() == [[1, 4, 7, 8], [0, 2, 3, 9]]
    alone = greedy_max_min(v[:1], 2, candidates=cand[:1])
    other = v.clone()
    other[1] = torch.randn(10, 4)
    assert torch.equal(greedy_max_min(other, 2, candidates=cand)[0], alone[0])
