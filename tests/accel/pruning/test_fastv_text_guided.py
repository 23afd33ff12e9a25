import torch

from vla_accel.accel.pruning import SelectionContext, build_method


def ctx(attention, budget, embeds=None):
    B, M = attention.shape
    return SelectionContext(visual_embeds=embeds if embeds is not None else torch.randn(B, M, 8),
                            visual_attention=attention, budget=budget)  # fmt: skip


def test_fastv_keeps_the_most_attended_tokens_sorted_per_row():
    att = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05], [0.4, 0.0, 0.3, 0.1, 0.2]])
    kept = build_method("fastv").select(ctx(att, 2))
    assert kept.tolist() == [[1, 3], [0, 2]]
    assert build_method("fastv").score_queries == "last"


def test_text_guided_uses_text_queries_and_keeps_top_tokens():
    method = build_method("text_guided")
    assert method.score_queries == "text"
    att = torch.tensor([[0.0, 0.2, 0.9, 0.1, 0.8, 0.3]])
    assert method.select(ctx(att, 3)).tolist() == [[2, 4, 5]]
