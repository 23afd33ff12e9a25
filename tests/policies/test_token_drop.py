import pytest
import torch
from fixtures.tiny_models import make_llama, make_prompt

from vla_accel.accel.config import AccelConfig, TokenPruningConfig
from vla_accel.accel.pruning.base import topk_indices
from vla_accel.accel.runner import AcceleratedRunner
from vla_accel.policies.common.prompt import positions_from_mask
from vla_accel.policies.llm_runner import HFRunner
from vla_accel.policies.token_drop import TokenDrop, forward_with_dropped_tokens
from vla_accel.policies.train_config import TrainSchema


@pytest.fixture(scope="module")
def llm():
    return make_llama(num_layers=5)


def test_training_cut_equals_the_accelerators_pruning_at_inference(llm):
    """The training forward with visual tokens dropped before layer K gives the runner's prefill hidden
    state when the runner's pruning keeps the same tokens at the same K (left-padded rows of 3 lengths)."""
    prompt, K, budget, seed = make_prompt(), 2, 5, 3
    B, M = prompt["inputs_embeds"].shape[0], prompt["num_visual"]
    runner = AcceleratedRunner(AccelConfig(pruning=TokenPruningConfig(
        method="random", layer=K, keep_tokens=budget, params={"seed": seed})))
    with torch.no_grad():
        ref = runner.prefill(llm, **prompt).hidden
    kept = topk_indices(torch.rand(B, M, generator=torch.Generator().manual_seed(seed)), budget)
    assert torch.equal(runner.stats.kept_visual.sort(dim=1).values, kept.sort(dim=1).values)
    with torch.no_grad():
        got = forward_with_dropped_tokens(llm.model, prompt["inputs_embeds"], prompt["attention_mask"],
                                          positions_from_mask(prompt["attention_mask"]), prompt["visual_start"],
                                          M, kept.sort(dim=1).values, K)[:, -1]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        full = HFRunner().prefill(llm, **prompt).hidden
    assert (got - full).abs().max() > 1e-2  # the cut changed the output: the comparison can fail


def test_cut_output_is_differentiable_and_ignores_dropped_tokens_only_after_layer_k(llm):
    prompt, K = make_prompt(lengths=(24, 24)), 3
    M = prompt["num_visual"]
    kept = torch.tensor([[0, 3, 7, 9], [1, 2, 11, 15]])
    pos = positions_from_mask(prompt["attention_mask"])

    def last_hidden(embeds):
        return forward_with_dropped_tokens(llm.model, embeds, prompt["attention_mask"], pos,
                                           prompt["visual_start"], M, kept, K)[:, -1]

    embeds = prompt["inputs_embeds"].clone().requires_grad_(True)
    last_hidden(embeds).sum().backward()
    dropped = prompt["visual_start"][0] + 5  # visual token 5 of row 0: not kept, but seen by layers < K
    assert embeds.grad[0, dropped].abs().sum() > 0
    assert embeds.grad[1].abs().sum() > 0 and torch.isfinite(embeds.grad).all()


def test_draw_keeps_a_drawn_ratio_per_step_and_its_own_subset_per_row():
    drop = TokenDrop(prob=1.0, layer=2, keep_ratios=(0.25,))
    kept = drop.draw(4, 128, torch.Generator().manual_seed(0))
    assert kept.shape == (4, 32) and torch.equal(kept, kept.sort(dim=1).values)
    assert len({tuple(r.tolist()) for r in kept}) == 4 and int(kept.max()) < 128
    g = torch.Generator().manual_seed(1)
    draws = [TokenDrop(prob=0.5, layer=2, keep_ratios=(0.125, 0.5)).draw(2, 64, g) for _ in range(400)]
    cut = [d for d in draws if d is not None]
    assert 150 < len(cut) < 250 and {d.shape[1] for d in cut} == {8, 32}
    off = torch.Generator().manual_seed(2)
    assert TokenDrop(prob=0.0, layer=2, keep_ratios=(0.5,)).draw(2, 64, off) is None
    assert torch.equal(off.get_state(), torch.Generator().manual_seed(2).get_state())  # drew nothing


@pytest.mark.parametrize("kw,match", [
    ({"token_drop_prob": 1.5}, "token_drop_prob"),
    ({"token_drop_prob": 0.5, "token_drop_layer": 0}, "token_drop_layer"),
    ({"token_drop_prob": 0.5, "token_drop_keep": [1.0]}, "token_drop_keep"),
])
def test_bad_drop_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainSchema(**kw)


def test_layer_outside_the_llama_is_refused(llm):
    prompt = make_prompt()
    with pytest.raises(ValueError, match="token drop layer"):
        forward_with_dropped_tokens(llm.model, prompt["inputs_embeds"], prompt["attention_mask"],
                                    positions_from_mask(prompt["attention_mask"]), prompt["visual_start"],
                                    prompt["num_visual"], torch.zeros(3, 2, dtype=torch.long), 5)
