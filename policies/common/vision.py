"""A ViT vision backbone whose parameter names are timm's (and so OpenVLA's checkpoint keys).

Names per encoder (timm `VisionTransformer`): `patch_embed.proj` (Conv2d), `cls_token` (1, 1, D),
`reg_token` (1, R, D), `pos_embed` (1, P or 1+P, D), `blocks.N.{norm1, attn.qkv, attn.proj,
ls1.scale_factor, norm2, mlp.fc1, mlp.fc2, ls2.scale_factor}`, `norm`. Layer scale is called
`scale_factor` (not timm's `gamma`) because OpenVLA's HF export renamed it so; `openvla_hf_layout` maps
timm's `gamma` too. The patch features come from block `feature_layer` (OpenVLA: the second-to-last
block, -2), without the final norm and without prefix (class/register) tokens; blocks after it are
never run.

`VisionBackbone` holds `featurizer` and, for a Prismatic-style fused backbone (DINOv2 + SigLIP), a
`fused_featurizer`: both see the same image (each with its own mean/std) and their per-patch
features are concatenated along the channel dimension: (B, P, D1 + D2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
STEMS = ("patch", "conv")


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


@dataclass
class ViTConfig:
    image_size: int = 128
    patch_size: int = 16
    width: int = 192
    depth: int = 4
    num_heads: int = 3
    mlp_dim: int = 768
    class_token: bool = True
    reg_tokens: int = 0
    # timm's `no_embed_class`: the position table covers the patches only (DINOv2-reg, SigLIP).
    no_embed_class: bool = False
    layer_scale: bool = False
    layer_scale_init: float = 1e-5
    act: str = "gelu"  # "gelu" (erf, timm's default), "gelu_tanh" or "quick_gelu" (OpenAI CLIP)
    ln_eps: float = 1e-6
    feature_layer: int = -2  # which block's output is the patch feature (OpenVLA: second-to-last)
    # Per-channel pixel normalisation applied to images in [0, 1] (ImageNet for DINOv2, 0.5 for SigLIP).
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # "patch": timm's one strided conv (OpenVLA's layout). "conv": Octo's small convolutional stem
    # (3x3 stride-2 convs with GroupNorm, then a patchifying conv): a ViT trained from scratch on a
    # few thousand frames localises small objects far sooner with it (Xiao et al. 2021, Octo 2024).
    stem: str = "patch"
    stem_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # one stride-2 conv each
    # Apply the final LayerNorm `norm` to the patch features (timm's forward_features). OpenVLA does not
    # (its pretrained features are well scaled). Measured: on its own it did not stop a from-scratch VLM
    # from ignoring the image (README, "Training the small policies"); the projector's standardiser did.
    feature_norm: bool = False

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be divisible by num_heads {self.num_heads}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"unknown act {self.act!r}; valid: {ACTIVATIONS}")
        if not -self.depth <= self.feature_layer < self.depth:
            raise ValueError(f"feature_layer {self.feature_layer} out of range for depth {self.depth}")
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; valid: {STEMS}")
        if self.stem == "conv" and self.patch_size % 2 ** len(self.stem_channels):
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of 2^{len(self.stem_channels)} "
                             f"(one halving per stem conv, stem_channels={self.stem_channels})")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (RGB)")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def last_block(self) -> int:
        """Index of the last block that runs (the feature layer, as a non-negative index)."""
        return self.feature_layer % self.depth

    def to_dict(self) -> dict:
        return asdict(self)


PROBE_KINDS = ("cls", "received")


@dataclass
class AttentionProbe:
    """A request for encoder attention maps, filled in by one forward of the vision backbone.

    layers:  encoder blocks, 0-indexed; a negative index counts back from the last block that runs
             (-1 = the feature layer, whose output the projector reads). Blocks after the feature layer
             never run, so they cannot be probed.
    kind:    "cls": the class token's head-averaged attention to each patch (FasterVLM / VTC-CLS; needs
             ``class_token``); "received": the head-averaged attention each patch receives, averaged over
             every query token of the block (HiPrune; any encoder).
    encoder: which encoder of a fused backbone (0 = ``featurizer``: DINOv2 in OpenVLA, the one with a
             class token; 1 = ``fused_featurizer``: SigLIP, none).
    maps:    the result, each request entry (as given: a ``layers`` int or a ``relative`` float) ->
             (B, P) float32, patches in raster order.

    Nothing is computed unless a probe is passed: the plain forward is untouched.
    """

    layers: tuple[int, ...]
    kind: str = "cls"
    encoder: int = 0
    # more blocks given by relative depth f in (0, 1]: block round(f * depth) - 1 (1-indexed layer f * depth
    # of the paper's encoder), clipped to the blocks that run -- for a paper layer in an encoder of any depth
    relative: tuple[float, ...] = ()
    clip: bool = False  # drop ``layers`` that do not run (an ensemble over "the last n blocks") instead of failing
    maps: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"attention probe kind must be one of {list(PROBE_KINDS)}, got {self.kind!r}")
        if self.encoder not in (0, 1):
            raise ValueError(f"attention probe encoder must be 0 or 1, got {self.encoder}")
        self.layers = tuple(int(x) for x in self.layers)

    def resolve(self, cfg: ViTConfig) -> dict[int, list]:
        """{block that runs: the request entries it answers}; a clear error if an entry does not run (unless
        ``clip``) or the kind needs a class token the encoder lacks."""
        run = cfg.last_block + 1
        if self.kind == "cls" and not cfg.class_token:
            raise ValueError(f"[CLS] attention needs an encoder with a class token; encoder {self.encoder} "
                             f"(ViT width {cfg.width}, depth {cfg.depth}) has class_token=False")
        layers = [x for x in self.layers if -run <= x < run] if self.clip else list(self.layers)
        bad = [x for x in layers if not -run <= x < run]
        if bad or not (layers or self.relative):
            raise ValueError(f"encoder attention layers {bad or list(self.layers)} do not run in encoder "
                             f"{self.encoder}: it runs blocks 0..{run - 1} (feature_layer={cfg.feature_layer}); "
                             f"valid -{run}..{run - 1}")  # fmt: skip
        blocks: dict[int, list] = {}
        for key in layers:
            blocks.setdefault(key % run, []).append(key)
        for f in self.relative:
            blocks.setdefault(min(run - 1, max(0, round(f * cfg.depth) - 1)), []).append(f)
        return blocks


def patch_attention(block: "Block", x: torch.Tensor, kind: str, num_prefix: int) -> torch.Tensor:
    """(B, P) float32 head-averaged attention of ``block`` on its input ``x`` (B, prefix + P, D): the class
    token's row (kind "cls") or the mean over all queries (kind "received"), over the patch keys only.
    Recomputed from the block's own norm1 and qkv -- the block itself keeps its SDPA."""
    attn = block.attn
    b, n, d = x.shape
    hd = d // attn.num_heads
    qkv = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, hd)
    q, k = qkv[:, :, 0].transpose(1, 2).float(), qkv[:, :, 1].transpose(1, 2).float()  # (B, H, N, hd)
    if kind == "cls":
        q = q[:, :, :1]  # only the class token's row is needed
    probs = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5, dim=-1)  # (B, H, Q, N)
    return probs.mean(dim=(1, 2))[:, num_prefix:]


class PatchEmbed(nn.Module):
    """`proj` turns the image (or, with the conv stem, the stem's feature map) into one token per
    patch_size x patch_size pixels."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.stem = None
        in_ch, k = 3, cfg.patch_size
        if cfg.stem == "conv":
            layers: list[nn.Module] = []
            for ch in cfg.stem_channels:
                layers += [nn.Conv2d(in_ch, ch, 3, stride=2, padding=1), nn.GroupNorm(min(32, ch // 4), ch),
                           nn.ReLU()]
                in_ch = ch
            self.stem = nn.Sequential(*layers)
            k = cfg.patch_size // 2 ** len(cfg.stem_channels)
        self.proj = nn.Conv2d(in_ch, cfg.width, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, P, D)
        if self.stem is not None:
            x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with timm's fused `qkv` projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = QuickGELU() if act == "quick_gelu" else nn.GELU(
            approximate="tanh" if act == "gelu_tanh" else "none")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        d = cfg.width
        self.norm1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.attn = Attention(d, cfg.num_heads)
        self.ls1 = LayerScale(d, cfg.layer_scale_init) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.mlp = Mlp(d, cfg.mlp_dim, cfg.act)
        self.ls2 = LayerScale(d, cfg.layer_scale_init) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTEncoder(nn.Module):
    """One ViT; `forward` returns the patch features of block `cfg.feature_layer`: (B, P, D)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, d)) if cfg.reg_tokens else None
        n_pos = cfg.num_patches + (0 if cfg.no_embed_class else cfg.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.randn(1, n_pos, d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        # Used for the patch features only with cfg.feature_norm (OpenVLA: not used, kept for its keys).
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)

    def _prefix(self, b: int) -> list[torch.Tensor]:
        tokens = []
        if self.cls_token is not None:
            tokens.append(self.cls_token.expand(b, -1, -1))
        if self.reg_token is not None:
            tokens.append(self.reg_token.expand(b, -1, -1))
        return tokens

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch + position embedding with prefix tokens first: (B, prefix + P, D)."""
        x = self.patch_embed(pixel_values)
        b = x.shape[0]
        if self.cfg.no_embed_class:  # timm: pos_embed on patches, then prepend prefix tokens
            return torch.cat(self._prefix(b) + [x + self.pos_embed], dim=1)
        return torch.cat(self._prefix(b) + [x], dim=1) + self.pos_embed

    def forward(self, pixel_values: torch.Tensor, film: list | None = None,
                probe: AttentionProbe | None = None) -> torch.Tensor:
        """film: per block that runs, (scale, shift) of shape (B, D) applied to its output (film.py).
        probe: which blocks' attention to record into ``probe.maps`` (an accelerator asked for it); the
        features are the same operations either way, so they do not change by a bit."""
        x = self.embed(pixel_values)
        wanted = probe.resolve(self.cfg) if probe is not None else {}
        for i, block in enumerate(self.blocks[: self.cfg.last_block + 1]):
            if i in wanted:
                m = patch_attention(block, x, probe.kind, self.cfg.num_prefix_tokens)
                probe.maps.update(dict.fromkeys(wanted[i], m))
            x = block(x)
            if film is not None:
                scale, shift = film[i]
                x = x * (1 + scale[:, None]) + shift[:, None]
        if self.cfg.feature_norm:
            x = self.norm(x)
        return x[:, self.cfg.num_prefix_tokens :]


class VisionBackbone(nn.Module):
    """One ViT, or two fused channel-wise per patch (Prismatic's DINOv2 + SigLIP)."""

    def __init__(self, encoders: list[ViTConfig]) -> None:
        super().__init__()
        if len(encoders) not in (1, 2):
            raise ValueError(f"need 1 or 2 vision encoders, got {len(encoders)}")
        if len(encoders) == 2 and encoders[0].num_patches != encoders[1].num_patches:
            raise ValueError(
                "fused encoders must give the same number of patches, got "
                f"{encoders[0].num_patches} and {encoders[1].num_patches}"
            )
        self.featurizer = ViTEncoder(encoders[0])
        self.fused_featurizer = ViTEncoder(encoders[1]) if len(encoders) == 2 else None
        self.embed_dim = sum(e.width for e in encoders)
        self.num_patches = encoders[0].num_patches

    def forward(self, pixel_values: torch.Tensor, film: list | None = None,
                probe: AttentionProbe | None = None) -> torch.Tensor:
        """pixel_values (B, 3 * n_encoders, H, W), each encoder's normalisation stacked on channels
        (OpenVLA's layout) -> (B, P, sum of widths). film: per encoder, its blocks' modulation.
        probe: record the attention maps of encoder ``probe.encoder`` (``AttentionProbe``)."""
        film = film if film is not None else [None, None]
        probes = [None, None]
        if probe is not None:
            probes[probe.encoder] = probe
        if self.fused_featurizer is None:
            return self.featurizer(pixel_values, film[0], probes[0])
        img, img_fused = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(img, film[0], probes[0]),
                          self.fused_featurizer(img_fused, film[1], probes[1])], dim=2)

    def encoder_configs(self) -> list[ViTConfig]:
        encoders = [self.featurizer] + ([self.fused_featurizer] if self.fused_featurizer is not None else [])
        return [e.cfg for e in encoders]
