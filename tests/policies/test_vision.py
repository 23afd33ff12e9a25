"""The timm-named ViT backbone and the projector."""

import pytest
import torch

from vla_accel.policies.common.projector import Projector
from vla_accel.policies.common.vision import ViTConfig, VisionBackbone


def vit(**kw):
    base = dict(image_size=32, patch_size=8, width=32, depth=3, num_heads=2, mlp_dim=64)
    return ViTConfig(**{**base, **kw})


def test_features_come_from_the_feature_layer_and_later_blocks_never_run():
    torch.manual_seed(0)
    backbone = VisionBackbone([vit(feature_layer=-2, reg_tokens=4, layer_scale=True, no_embed_class=True)])
    enc = backbone.featurizer
    assert enc.pos_embed.shape == (1, 16, 32) and enc.reg_token.shape == (1, 4, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = backbone(x)
        enc.blocks[2].mlp.fc2.weight.add_(1.0)  # the last block: unused with feature_layer=-2
        after = backbone(x)
        enc.blocks[1].mlp.fc2.weight.add_(1.0)
        changed = backbone(x)
    assert before.shape == (2, 16, 32)  # prefix (class + register) tokens dropped
    torch.testing.assert_close(before, after)
    assert not torch.allclose(before, changed)


def test_fused_backbone_concatenates_channels_per_patch_and_projector_maps_to_llm_width():
    backbone = VisionBackbone([vit(), vit(width=48, num_heads=3, class_token=False, no_embed_class=True)])
    feats = backbone(torch.rand(2, 6, 32, 32))
    assert feats.shape == (2, 16, 80) and backbone.embed_dim == 80
    fused = Projector(80, 64, num_layers=3)
    assert fused.fc1.out_features == 320 and fused(feats).shape == (2, 16, 64)
    assert Projector(80, 64, num_layers=2)(feats).shape == (2, 16, 64)


def test_mismatched_fused_patch_grids_are_rejected():
    with pytest.raises(ValueError, match="same number of patches"):
        VisionBackbone([vit(), vit(patch_size=16)])
    with pytest.raises(ValueError, match="unknown act"):
        vit(act="relu")


def test_conv_stem_gives_one_token_per_patch_and_keeps_patches_local():
    torch.manual_seed(0)
    enc = VisionBackbone([vit(stem="conv", stem_channels=[8, 16], depth=2)]).featurizer
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        tokens = enc.patch_embed(x)
        x2 = x.clone()
        x2[:, :, :8, :8] = 0.0  # the top-left patch only
        tokens2 = enc.patch_embed(x2)
    assert tokens.shape == (1, 16, 32)  # (32 / 8)^2 patches of width 32
    changed = (tokens - tokens2).abs().amax(-1) > 1e-6
    # GroupNorm normalises over the whole map, so a patch's change reaches every token a little;
    # the top-left token must change most.
    assert changed[0, 0] and (tokens - tokens2).abs().amax(-1).argmax() == 0


def test_bad_stem_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown stem"):
        vit(stem="resnet")
    with pytest.raises(ValueError, match="multiple of 2"):
        vit(stem="conv", patch_size=8, stem_channels=[8, 8, 8, 8])


def test_feature_norm_applies_the_final_layernorm_to_the_patch_features():
    torch.manual_seed(0)
    plain = VisionBackbone([vit(feature_layer=-1)])
    normed = VisionBackbone([vit(feature_layer=-1, feature_norm=True)])
    normed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = plain.featurizer.norm(plain(x))
        torch.testing.assert_close(normed(x), expected)


def test_attention_probe_leaves_the_features_bit_identical_and_gives_the_cls_row():
    from vla_accel.policies.common.vision import AttentionProbe

    torch.manual_seed(0)
    backbone = VisionBackbone([vit(feature_layer=-2, reg_tokens=2), vit(class_token=False, no_embed_class=True)])
    x = torch.rand(2, 6, 32, 32)
    with torch.no_grad():
        plain = backbone(x)
        probe = AttentionProbe(layers=(-1, 0), kind="cls")
        probed = backbone(x, probe=probe)
    assert torch.equal(plain, probed) and set(probe.maps) == {-1, 0}
    # an independent recompute of block 1's (= -1 of the 2 blocks that run) [CLS] row
    enc = backbone.featurizer
    with torch.no_grad():
        h = enc.blocks[0](enc.embed(x[:, :3]))
        qkv = enc.blocks[1].attn.qkv(enc.blocks[1].norm1(h)).reshape(2, 19, 3, 2, 16)
        q, k = qkv[:, :, 0], qkv[:, :, 1]  # (B, N, H, hd)
        probs = torch.einsum("bhd,bnhd->bhn", q[:, 0], k).div(4.0).softmax(-1)  # scale 16 ** -0.5
    torch.testing.assert_close(probe.maps[-1], probs.mean(1)[:, 3:])  # 1 class + 2 register tokens skipped
    received = AttentionProbe(layers=(0,), kind="received", encoder=1)
    with torch.no_grad():
        backbone(x, probe=received)
    assert received.maps[0].shape == (2, 16)
    with pytest.raises(ValueError, match="class_token=False"):
        backbone(x, probe=AttentionProbe(layers=(0,), kind="cls", encoder=1))
    with pytest.raises(ValueError, match="do not run"):
        backbone(x, probe=AttentionProbe(layers=(2,)))  # feature_layer=-2: block 2 never runs
