"""The sped-up selection returns exactly the kept indices of the code before the speed-up
(reference_vla_pruner.py, a frozen copy), compared with torch.equal on many random inputs."""

import itertools

import pytest
import torch
from reference_vla_pruner import action_estimate as ref_action_estimate
from reference_vla_pruner import greedy_max_min as ref_greedy_max_min
from reference_vla_pruner import select as ref_select

from vla_accel.accel.pruning import SelectionContext, build_method
from vla_accel.accel.pruning.diversity import greedy_max_min

DTYPES = (torch.float32, torch.bfloat16)


def _embeds(g, B, M, D, dtype, ties):
    """Random embeddings; ties: duplicated rows (exact distance ties), an all-equal block and a zero row."""
    x = torch.randn(B, M, D, generator=g)
    if ties:
        src = torch.randint(0, M, (M // 3,), generator=g)
        dst = torch.randint(0, M, (M // 3,), generator=g)
        x[:, dst] = x[:, src]
        x[:, : max(2, M // 8)] = x[:, :1]  # a block of identical tokens
        x[:, -1] = 0.0  # F.normalize keeps it 0: distance 1 to everything
    return x.to(dtype)


def _scores_with_union(g, B, M, budget, overlap):
    """(semantic, action) (B, M) whose top-`budget` sets share `overlap` tokens: union = 2 * budget - overlap."""
    sem, act = torch.rand(B, M, generator=g), torch.rand(B, M, generator=g)
    for b in range(B):
        perm = torch.randperm(M, generator=g)
        s_top, a_top = perm[:budget], torch.cat([perm[:overlap], perm[budget:2 * budget - overlap]])
        sem[b, s_top] += 10.0
        act[b, a_top] += 10.0
    return sem, act / act.sum(-1, keepdim=True)


SHAPES = [(1, 16, 64, 4), (3, 16, 64, 6), (2, 64, 32, 16), (1, 128, 128, 32), (2, 128, 128, 40),
          (1, 256, 1024, 64), (3, 256, 256, 64), (1, 256, 1024, 128)]


@pytest.mark.parametrize("B,M,D,budget", SHAPES)
def test_vla_pruner_select_equals_the_frozen_reference(B, M, D, budget):
    g = torch.Generator().manual_seed(B * 1000 + M + budget)
    m = build_method("vla_pruner", window=1)
    for overlap, dtype, ties in itertools.product((budget, budget // 2, 1, 0), DTYPES, (False, True)):
        emb = _embeds(g, B, M, D, dtype, ties)
        sem, act = _scores_with_union(g, B, M, budget, overlap)
        m.reset()
        m.observe_step(act)
        want = ref_select(emb, sem, budget, ref_action_estimate(list(m._history), m.temporal_weights()))
        got = m.select(SelectionContext(emb, sem, budget))
        assert torch.equal(got, want), (overlap, dtype, ties)


@pytest.mark.parametrize("B,M,D,budget", SHAPES)
def test_greedy_max_min_equals_the_frozen_reference(B, M, D, budget):
    """DivPrune's call (every token a candidate) and arbitrary candidate masks, including exact ties."""
    g = torch.Generator().manual_seed(7 * M + budget)
    for dtype, ties in itertools.product(DTYPES, (False, True)):
        emb = _embeds(g, B, M, D, dtype, ties)
        assert torch.equal(greedy_max_min(emb, budget), ref_greedy_max_min(emb, budget))
        for n_cand in (budget, min(M, budget + 1), min(M, 2 * budget)):
            cand = torch.zeros(B, M, dtype=torch.bool)
            for b in range(B):
                cand[b, torch.randperm(M, generator=g)[:n_cand]] = True
            got, want = greedy_max_min(emb, budget, cand), ref_greedy_max_min(emb, budget, cand)
            assert torch.equal(got, want), (dtype, ties, n_cand)


def test_all_ties_go_to_the_lowest_index_as_before():
    emb = torch.ones(2, 12, 8)  # every distance 0
    for k in (1, 3, 12):
        assert torch.equal(greedy_max_min(emb, k), ref_greedy_max_min(emb, k))
        assert greedy_max_min(emb, k)[0].tolist() == list(range(k))
    cand = torch.zeros(2, 12, dtype=torch.bool)
    cand[:, [2, 5, 9]] = True
    assert greedy_max_min(emb, 2, cand).tolist() == [[2, 5], [2, 5]] == ref_greedy_max_min(emb, 2, cand).tolist()


def test_action_estimate_equals_the_frozen_reference():
    g = torch.Generator().manual_seed(3)
    for order in ("newest_first", "oldest_first"):
        m = build_method("vla_pruner", window=3, temporal_order=order)
        for _ in range(5):
            m.observe_step(torch.rand(2, 32, generator=g) * (torch.rand(2, 32, generator=g) > 0.5))
            want = ref_action_estimate(list(m._history), m.temporal_weights())
            assert torch.equal(m.action_estimate(), want)


def test_too_few_candidates_still_raise():
    with pytest.raises(ValueError, match="exceeds the number of candidates"):
        greedy_max_min(torch.randn(1, 8, 4), 3, candidates=torch.tensor([[True, True] + [False] * 6]))
    with pytest.raises(ValueError, match="exceeds the number of candidates"):
        greedy_max_min(torch.randn(1, 4, 4), 5)


@pytest.mark.parametrize("B,M,D,budget", SHAPES[:5])
def test_the_device_path_equals_the_numpy_path(B, M, D, budget):
    """A CPU runs the greedy in numpy; a GPU runs the torch loop (``_greedy_picks``). Both on CPU
    tensors here, with exact ties and candidate masks: the same picks."""
    from vla_accel.accel.pruning.diversity import _greedy_picks, cosine_distance

    g = torch.Generator().manual_seed(11 * M + budget)
    for ties in (False, True):
        emb = _embeds(g, B, M, D, torch.float32, ties)
        for n_cand in (None, budget, min(M, 2 * budget)):
            cand = None
            if n_cand is not None:
                cand = torch.zeros(B, M, dtype=torch.bool)
                for b in range(B):
                    cand[b, torch.randperm(M, generator=g)[:n_cand]] = True
            device_path = _greedy_picks(cosine_distance(emb), budget, cand).sort(dim=-1).values
            assert torch.equal(device_path, greedy_max_min(emb, budget, cand)), (ties, n_cand)
