"""OcclusionAwareSPADEGenerator (checkpoint prefix ``generator.``).

The generator is split in two so that everything that depends only on the source image (the 3D feature volume
and its compressed copy for the motion estimate) is computed once per video instead of once per frame:

* :meth:`OcclusionAwareSPADEGenerator.encode_source` — source image -> :class:`SourceFeatures`;
* :meth:`OcclusionAwareSPADEGenerator.animate` — source features + source/driving keypoints -> frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sadtalker.render.blocks import SPADE_LEAKY_SLOPE, DownBlock2d, ResBlock3d, SameBlock2d, SPADEResnetBlock
from sadtalker.render.dense_motion import DenseMotionConfig, DenseMotionNetwork


@dataclass(frozen=True)
class GeneratorConfig:
    """``generator_params`` + ``common_params`` of facerender.yaml (identical in facerender_still.yaml)."""

    image_channel: int = 3
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)


@dataclass(frozen=True)
class SourceFeatures:
    """What the generator needs from the source image; computed once per source (batch 1)."""

    feature_3d: torch.Tensor  # (1, reshape_channel, reshape_depth, S/4, S/4) appearance volume
    motion_feature: torch.Tensor  # (1, compress, reshape_depth, S/4, S/4) input of the dense-motion network


class SPADEDecoder(nn.Module):
    """Warped feature map (B, 256, S/4, S/4) -> image (B, 3, S, S) in (0, 1); the feature is also the SPADE label."""

    FEATURES = 256  # upstream hard-codes ic=256, oc=64, label_nc=256
    OUT_FEATURES = 64
    NUM_MIDDLE = 6

    def __init__(self) -> None:
        super().__init__()
        ic, oc = self.FEATURES, self.OUT_FEATURES
        self.fc = nn.Conv2d(ic, 2 * ic, kernel_size=3, padding=1)
        for i in range(self.NUM_MIDDLE):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * ic, 2 * ic, label_nc=ic))
        self.up_0 = SPADEResnetBlock(2 * ic, ic, label_nc=ic)
        self.up_1 = SPADEResnetBlock(ic, oc, label_nc=ic)
        self.conv_img = nn.Conv2d(oc, 3, kernel_size=3, padding=1)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = self.fc(feature)
        for i in range(self.NUM_MIDDLE):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, SPADE_LEAKY_SLOPE)))


def _resize_deformation(deformation: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of a (B, D, H, W, 3) field when it does not match the feature volume (never at 256/512)."""
    if tuple(deformation.shape[1:4]) == size:
        return deformation
    resized = F.interpolate(deformation.permute(0, 4, 1, 2, 3), size=size, mode="trilinear")
    return resized.permute(0, 2, 3, 4, 1)


class OcclusionAwareSPADEGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or GeneratorConfig()
        self.reshape_channel = cfg.reshape_channel
        self.reshape_depth = cfg.reshape_depth
        self.dense_motion_network = DenseMotionNetwork(cfg.dense_motion)

        be, mf = cfg.block_expansion, cfg.max_features
        self.first = SameBlock2d(cfg.image_channel, be, kernel_size=3, padding=1)
        widths = [min(mf, be * 2**i) for i in range(cfg.num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(DownBlock2d(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.second = nn.Conv2d(widths[-1], mf, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))

        out_features = be * 2**cfg.num_down_blocks
        self.third = SameBlock2d(mf, out_features, kernel_size=3, padding=1, lrelu=True)
        self.fourth = nn.Conv2d(out_features, out_features, kernel_size=1)
        self.decoder = SPADEDecoder()

    def encode_source(self, source_image: torch.Tensor) -> SourceFeatures:
        """Source image (1, 3, S, S) -> appearance volume and its compressed copy for the motion estimate."""
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        b, _, h, w = out.shape
        # The 2D channels are reinterpreted as (channels, depth): a 3D feature volume.
        feature_3d = self.resblocks_3d(out.reshape(b, self.reshape_channel, self.reshape_depth, h, w))
        return SourceFeatures(feature_3d, self.dense_motion_network.compress_feature(feature_3d))

    def animate(self, source: SourceFeatures, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Render one frame per driving keypoint set: (B, K, 3) -> (B, 3, S, S) in (0, 1)."""
        batch = kp_driving.shape[0]
        motion = self.dense_motion_network(source.motion_feature, kp_source, kp_driving)

        volume = source.feature_3d.expand(batch, *source.feature_3d.shape[1:])
        deformation = _resize_deformation(motion.deformation, tuple(volume.shape[2:]))  # type: ignore[arg-type]
        warped = F.grid_sample(volume, deformation, align_corners=False)
        b, c, d, h, w = warped.shape
        out = self.fourth(self.third(warped.reshape(b, c * d, h, w)))

        if motion.occlusion_map is not None:
            occlusion = motion.occlusion_map
            if occlusion.shape[2:] != out.shape[2:]:
                occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear")
            out = out * occlusion
        return self.decoder(out)

    def forward(self, source_image: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """One-shot convenience: encode the (single) source image and render every driving keypoint set."""
        return self.animate(self.encode_source(source_image), kp_source, kp_driving)
