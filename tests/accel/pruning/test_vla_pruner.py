import pytest
import torch

from vla_accel.accel.pruning import SelectionContext, build_method


def feed(method, steps):
    for s in steps:
        method.observe_step(torch.as_tensor(s, dtype=torch.float32)[None])


def test_temporal_weights_newest_first_is_the_paper_default():
    m = build_method("vla_pruner")
    feed(m, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])  # oldest ... newest
    assert m.temporal_weights() == pytest.approx([0.8**3, 0.8**2, 0.8])
    est = m.action_estimate()[0]
    total = 0.8 + 0.64 + 0.512
    assert est.tolist() == pytest.approx([0.512 / total, 0.64 / total, 0.8 / total])
    assert float(est.sum()) == pytest.approx(1.0)


def test_temporal_weights_released_code_order_weighs_oldest_most():
    m = build_method("vla_pruner", temporal_order="oldest_first")
    feed(m, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert m.temporal_weights() == pytest.approx([0.8, 0.8**2, 0.8**3])
    est = m.action_estimate()[0]
    assert est[0] > est[1] > est[2]


def test_window_keeps_only_the_last_w_steps_and_warmup_and_reset():
    m = build_method("vla_pruner", window=3)
    assert not m.wants_to_prune(1)
    feed(m, [[1, 0, 0, 0], [0, 1, 0, 0]])
    assert not m.wants_to_prune(1)
    feed(m, [[0, 0, 1, 0], [0, 0, 0, 1]])
    assert m.wants_to_prune(1)
    assert m.action_estimate()[0, 0] == 0  # the oldest step fell out of the window
    with pytest.raises(ValueError, match="batch size changed"):
        m.wants_to_prune(2)
    m.reset()
    assert not m.wants_to_prune(1)


def test_union_then_diversity_on_a_constructed_case():
    # M = 6, budget 2. semantic top-2 = {0, 1}; action top-2 = {1, 4} -> union {0, 1, 4} (3 > 2).
    # Embeddings: 0 and 1 nearly parallel, 4 orthogonal -> the diverse pair keeps 4 and one of {0, 1}.
    m = build_method("vla_pruner", window=1)
    feed(m, [[0.0, 0.3, 0.0, 0.1, 0.6, 0.0]])
    semantic = torch.tensor([[0.5, 0.3, 0.05, 0.05, 0.05, 0.05]])
    emb = torch.tensor([[[1.0, 0, 0], [1, 0.05, 0], [0, 0, 1], [0, 0.7, 0.7], [0, 1, 0], [0.7, 0.7, 0]]])
    kept = m.select(SelectionContext(emb, semantic, budget=2))
    assert kept.shape == (1, 2) and 4 in kept[0].tolist() and set(kept[0].tolist()) <= {0, 1, 4}
    # when both criteria agree the union is exactly the budget and is returned as is
    m2 = build_method("vla_pruner", window=1)
    feed(m2, [[0.6, 0.3, 0.0, 0.1, 0.0, 0.0]])
    assert m2.select(SelectionContext(emb, semantic, budget=2)).tolist() == [[0, 1]]


def test_rows_use_their_own_history():
    m = build_method("vla_pruner", window=1)
    m.observe_step(torch.tensor([[0, 0, 0, 1.0], [1.0, 0, 0, 0]]))
    semantic = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    emb = torch.eye(4).expand(2, 4, 4)
    kept = m.select(SelectionContext(emb, semantic, budget=1))
    # row 1: both criteria pick token 0 -> union {0}; row 0: union {0, 3} -> greedy max-min keeps one
    assert kept[1].tolist() == [0]
    assert kept[0].item() in (0, 3)


def test_semantic_query_option_and_bad_params():
    assert build_method("vla_pruner").score_queries == "all"
    assert build_method("vla_pruner", semantic_queries="last").score_queries == "last"
    for bad in (dict(window=0), dict(gamma=0.0), dict(semantic_queries="text"), dict(temporal_order="new")):
        with pytest.raises(ValueError):
            build_method("vla_pruner", **bad)
