"""VLA-Cache token reuse: static-patch selection, the merged KV cache, and outputs vs a full recompute."""

import pytest
import torch
from fixtures.tiny_models import make_llama, make_prompt

from vla_accel.accel.config import AccelConfig
from vla_accel.policies.llm_runner import HFRunner
from vla_accel.accel.runner import AcceleratedRunner
from vla_accel.accel.token_reuse import TokenReuseConfig, computed_token_index, pixel_patches, reusable_tokens


@pytest.fixture(scope="module")
def llm():
    return make_llama(num_layers=6)


def test_pixel_patches_follow_the_visual_token_order():
    g, p = 4, 3  # a 4 x 4 grid of 3 x 3 patches, two cameras
    img = torch.arange(g * g, dtype=torch.float32).view(g, g).repeat_interleave(p, 0).repeat_interleave(p, 1)
    pixels = torch.stack([img, img + 100]).expand(3, -1, -1, -1)[None].permute(0, 2, 1, 3, 4)  # (1, 2, 3, 12, 12)
    patches = pixel_patches(pixels, 2 * g * g)  # (1, 32, 27)
    assert patches.shape == (1, 32, 27)
    assert torch.equal(patches[0, :, 0], torch.cat([torch.arange(16.0), torch.arange(16.0) + 100]))
    assert (patches == patches[..., :1]).all()  # each patch is one constant block
    with pytest.raises(ValueError, match="cannot map"):
        pixel_patches(pixels, 30)


def test_reusable_tokens_static_minus_relevant():
    cfg = TokenReuseConfig(max_static=128, num_relevant=32)  # of 256 -> 8 and 2 of M = 16
    prev = torch.randn(1, 16, 12)
    cur = prev.clone()
    cur[0, [0, 1, 2]] = torch.randn(3, 12)  # three patches changed
    relevance = torch.zeros(1, 16)
    relevance[0, [3, 15]] = 1.0  # tokens 3 and 15 are task-relevant
    reuse = reusable_tokens(cfg, cur, prev, relevance)[0]
    assert not reuse[[0, 1, 2, 3, 15]].any()  # changed or relevant: always recomputed
    assert int(reuse.sum()) <= 8 and int(reuse.sum()) >= 8 - 2  # at most max_static, minus relevant ones among them
    idx = computed_token_index(reuse[None], torch.ones(1, 16), torch.tensor([2]), seq_len=30)
    assert idx.shape == (1, 30 - int(reuse.sum()))
    assert set((2 + reuse.nonzero()[:, 0]).tolist()).isdisjoint(idx[0].tolist())


def step_inputs(prompt, patches, changed=(), seed=0):
    """The prompt with the visual embeddings of the `changed` tokens (and their patches) replaced."""
    p = {k: v.clone() if torch.is_tensor(v) else v for k, v in prompt.items()}
    patches = patches.clone()
    g = torch.Generator().manual_seed(seed)
    for m in changed:
        patches[:, m] = torch.randn(patches.shape[0], patches.shape[2], generator=g)
        rows = torch.arange(patches.shape[0])
        p["inputs_embeds"][rows, p["visual_start"] + m] = torch.randn(patches.shape[0], 64, generator=g)
    return p, patches


def test_reuse_matches_full_compute_and_copies_old_kv(llm):
    prompt = make_prompt()
    patches = torch.randn(3, 16, 12, generator=torch.Generator().manual_seed(4))
    runner = AcceleratedRunner(AccelConfig(reuse=TokenReuseConfig(max_static=160, num_relevant=32)))  # 10 and 2
    runner.observe_patches(patches)
    first = runner.prefill(llm, **prompt)
    assert runner.stats.num_reused == 0  # nothing to reuse at the first step
    old_keys = [layer.keys for layer in first.cache.kv.layers]
    # step 2: same scene except the last three patches (moved). The static, irrelevant tokens are reused;
    # they come before the changed ones, so their context is unchanged and reuse is exact here.
    p2, patches2 = step_inputs(prompt, patches, changed=(13, 14, 15))
    runner.observe_patches(patches2)
    res = runner.prefill(llm, **p2)
    r = runner.stats.num_reused
    assert 8 <= r <= 10
    ref_runner = HFRunner()
    ref = ref_runner.prefill(llm, **p2)
    # the reused tokens' K/V are the previous step's, exactly; the computed ones are this step's
    kv = res.cache.kv
    for i in range(6):
        new_k = kv.layers[i].keys
        same = (new_k == old_keys[i]).all(-1).all(1)  # (B, T) positions whose keys were copied
        assert int(same.sum(-1).min()) >= r
        torch.testing.assert_close(new_k, ref.cache.kv.layers[i].keys, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(res.logits, ref.logits, atol=1e-4, rtol=1e-3)
    # decode continues on the merged cache like on a fresh one
    tok = torch.randn(3, 1, 64, generator=torch.Generator().manual_seed(8))
    got = runner.decode_one_token(llm, tok, res.cache, res.next_position[:, None])[0]
    want = ref_runner.decode_one_token(llm, tok, ref.cache, ref.next_position[:, None])[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_reuse_is_an_approximation_when_earlier_tokens_change(llm):
    prompt = make_prompt()
    patches = torch.randn(3, 16, 12, generator=torch.Generator().manual_seed(4))
    runner = AcceleratedRunner(AccelConfig(reuse=TokenReuseConfig(max_static=160, num_relevant=32)))
    runner.observe_patches(patches)
    runner.prefill(llm, **prompt)
    p2, patches2 = step_inputs(prompt, patches, changed=(0, 1))
    runner.observe_patches(patches2)
    res = runner.prefill(llm, **p2)
    assert runner.stats.num_reused >= 8
    ref = HFRunner().prefill(llm, **p2)
    assert torch.isfinite(res.logits).all()
    assert not torch.allclose(res.cache.kv.layers[3].keys, ref.cache.kv.layers[3].keys, atol=1e-3)


def test_changed_relevant_and_reset(llm):
    prompt = make_prompt(lengths=(30,))
    patches = torch.randn(1, 16, 12, generator=torch.Generator().manual_seed(4))
    runner = AcceleratedRunner(AccelConfig(reuse=TokenReuseConfig(max_static=256, num_relevant=64, relevance_layer=2)))
    runner.observe_patches(patches)
    runner.prefill(llm, **prompt)
    assert runner.stats.attention_probes == [("prefill", 2, 13)]  # the 13 text queries, at the relevance layer only
    relevant = runner._reuse_state.relevance[0].topk(4).indices
    p2, patches2 = step_inputs(prompt, patches, changed=(5,))
    runner.observe_patches(patches2)
    runner.prefill(llm, **p2)
    assert runner.stats.num_reused == 16 - 1 - len(set(relevant.tolist()) - {5})
    runner.reset()
    runner.observe_patches(patches2)
    runner.prefill(llm, **p2)
    assert runner.stats.num_reused == 0
    with pytest.raises(ValueError, match="observe_frame"):
        runner.prefill(llm, **p2)
