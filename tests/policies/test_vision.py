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
