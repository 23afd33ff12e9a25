import pytest
import torch

from vla_accel.accel.pruning import SelectionContext, build_method


def test_key_task_and_diverse_split():
    # relevance descending 0 > 1 > 2 > ... ; tokens 0..3 share one direction, token 9 is orthogonal
    M = 10
    att = torch.linspace(1.0, 0.1, M)[None]
    emb = torch.zeros(1, M, 4)
    emb[0, :9, 0] = 1.0
    emb[0, 4:9, 1] = torch.linspace(0.1, 0.5, 5)  # tokens 4..8 tilt slightly away from the key direction
    emb[0, 9, 2] = 1.0
    method = build_method("efficientvla_tokens", k_key=2, alpha=0.5)
    kept = method.select(SelectionContext(emb, att, budget=6))
    # K_key = 2 -> {0, 1}; K_task = floor(0.5 * 4) = 2 -> {2, 3}; K_div = 2 -> the least similar to the key
    # set among the rest: token 9 (orthogonal) and token 8 (largest tilt)
    assert kept.tolist() == [[0, 1, 2, 3, 8, 9]]
    assert method.score_queries == "text"


def test_alpha_one_is_pure_relevance():
    att = torch.tensor([[0.3, 0.9, 0.1, 0.7, 0.5]])
    method = build_method("efficientvla_tokens", k_key=1, alpha=1.0)
    kept = method.select(SelectionContext(torch.randn(1, 5, 3), att, 3))
    assert kept.tolist() == [[1, 3, 4]]


def test_bad_params():
    with pytest.raises(ValueError, match="alpha"):
        build_method("efficientvla_tokens", alpha=1.5)
    with pytest.raises(ValueError, match="unknown parameter"):
        build_method("efficientvla_tokens", k_keys=3)
