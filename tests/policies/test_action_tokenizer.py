import numpy as np
import pytest

from vla_accel.policies.common.action_tokenizer import (
    ActionTokenizer,
    action_stats,
    compute_norm_stats,
    normalize_actions,
    unnormalize_actions,
)


def test_tokens_are_the_last_256_ids_and_round_trip_within_half_a_bin():
    tok = ActionTokenizer(vocab_end=32000, n_bins=256)
    x = np.linspace(-1, 1, 1001)
    ids = tok.encode(x)
    assert ids.min() == 32000 - 256 and ids.max() == 32000 - 1
    width = 2.0 / 255  # 256 edges on [-1, 1] -> 255 bins
    assert np.abs(tok.decode(ids) - x).max() <= width / 2 + 1e-9


def test_decode_follows_openvlas_formula():
    tok = ActionTokenizer(vocab_end=1000, n_bins=256)
    centers = (tok.bins[:-1] + tok.bins[1:]) / 2
    # OpenVLA: d = vocab - id; index = clip(d - 1, 0, 254); value = bin_centers[index]
    assert tok.decode(np.array([999]))[0] == pytest.approx(centers[0])
    assert tok.decode(np.array([1000 - 256]))[0] == pytest.approx(centers[254])  # d = 256 clips to 254
    assert tok.encode(np.array([-1.0]))[0] == 999  # digitize(-1) = 1
    assert tok.encode(np.array([1.0]))[0] == 1000 - 256  # digitize(1) = 256
    assert tok.encode(np.array([5.0]))[0] == tok.encode(np.array([1.0]))[0]  # clipped first


def test_q01_q99_normalisation_round_trip_and_gripper_mask():
    rng = np.random.default_rng(0)
    acts = rng.uniform(-0.5, 0.3, (500, 7)).astype(np.float32)
    acts[:, 6] = np.where(rng.random(500) < 0.5, -1.0, 1.0)
    stats = compute_norm_stats(acts, n_trajectories=5)
    a = stats["action"]
    assert a["mask"] == [True] * 6 + [False]
    np.testing.assert_allclose(a["q01"], np.quantile(acts, 0.01, axis=0), rtol=1e-6)
    norm = normalize_actions(acts, a)
    assert norm.min() >= -1 and norm.max() <= 1
    np.testing.assert_array_equal(norm[:, 6], acts[:, 6])  # gripper not normalised
    inside = np.all((acts >= a["q01"]) & (acts <= a["q99"]), axis=1)
    np.testing.assert_allclose(unnormalize_actions(norm, a)[inside], acts[inside], atol=1e-5)


def test_unknown_unnorm_key_lists_the_valid_ones():
    stats = {"spatial": compute_norm_stats(np.zeros((4, 7))), "goal": compute_norm_stats(np.ones((4, 7)))}
    with pytest.raises(ValueError, match=r"unknown unnorm_key 'nope'.*\['goal', 'spatial'\]"):
        action_stats(stats, "nope")
    with pytest.raises(ValueError, match="pass unnorm_key"):
        action_stats(stats, None)
    assert action_stats({"only": stats["goal"]}, None) is stats["goal"]["action"]
