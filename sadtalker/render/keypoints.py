"""Canonical 3D keypoint detector (checkpoint prefix ``kp_extractor.``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sadtalker.render.blocks import DownBlock2d, UpBlock3d, coordinate_grid_3d


@dataclass(frozen=True)
class KPDetectorConfig:
    """``kp_detector_params`` + ``common_params`` of facerender.yaml (identical in facerender_still.yaml)."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_channel: int = 16384
    reshape_depth: int = 16
    temperature: float = 0.1
    scale_factor: float = 0.25
    num_kp: int = 15
    image_channel: int = 3


def gaussian_kernel_2d(scale: float, channels: int) -> torch.Tensor:
    """The fixed anti-aliasing filter of a ``scale``x downsampling: (channels, 1, k, k), sums to 1 per channel.

    sigma = (1/scale - 1) / 2 and k = 2*round(4*sigma) + 1 (1.5 and 13 for scale 0.25).  The checkpoint stores this
    buffer too (``down.weight``); loading overwrites ours with the identical values.
    """
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = g.view(size, 1) * g.view(1, size)
    kernel = kernel / kernel.sum()
    return kernel.expand(channels, 1, size, size).clone()


class AntiAliasDownsample(nn.Module):
    """Gaussian blur (zero padding) followed by keeping every ``1/scale``-th pixel."""

    weight: torch.Tensor  # buffer (registered in __init__), declared for the type checker

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        kernel = gaussian_kernel_2d(scale, channels)
        self.register_buffer("weight", kernel)
        self.pad = kernel.shape[-1] // 2  # odd kernel: same padding on both sides
        self.step = int(1 / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(F.pad(x, (self.pad,) * 4), self.weight, groups=x.shape[1])
        return out[:, :, :: self.step, :: self.step]


class KPHourglass(nn.Module):
    """2D encoder -> 1x1 conv -> reshape to a 3D volume -> 3D decoder (no skips)."""

    def __init__(self, cfg: KPDetectorConfig) -> None:
        super().__init__()
        be, mf, n = cfg.block_expansion, cfg.max_features, cfg.num_blocks
        self.down_blocks = nn.Sequential()
        for i in range(n):
            in_ch = cfg.image_channel if i == 0 else min(mf, be * 2**i)
            self.down_blocks.add_module(f"down{i}", DownBlock2d(in_ch, min(mf, be * 2 ** (i + 1))))
        self.conv = nn.Conv2d(min(mf, be * 2**n), cfg.reshape_channel, kernel_size=1)
        self.up_blocks = nn.Sequential()
        for i in range(n):
            self.up_blocks.add_module(f"up{i}", UpBlock3d(min(mf, be * 2 ** (n - i)), min(mf, be * 2 ** (n - i - 1))))
        self.reshape_depth = cfg.reshape_depth
        self.out_filters = min(mf, be)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(self.down_blocks(x))
        b, c, h, w = out.shape
        # The 2D channels become (channels, depth): the volume the keypoint heatmaps live in.
        out = out.reshape(b, c // self.reshape_depth, self.reshape_depth, h, w)
        return self.up_blocks(out)


def heatmap_to_keypoints(heatmap: torch.Tensor) -> torch.Tensor:
    """Expected (x, y, z) position under each normalised heatmap: (B, K, D, H, W) -> (B, K, 3)."""
    d, h, w = heatmap.shape[2:]
    grid = coordinate_grid_3d(d, h, w, dtype=heatmap.dtype, device=heatmap.device)
    return (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3, 4))


class KPDetector(nn.Module):
    """Image (B, 3, S, S) in [0, 1] -> canonical keypoints (B, num_kp, 3) in about [-1, 1]."""

    def __init__(self, cfg: KPDetectorConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or KPDetectorConfig()
        self.predictor = KPHourglass(cfg)
        self.kp = nn.Conv3d(self.predictor.out_filters, cfg.num_kp, kernel_size=3, padding=1)
        self.down = AntiAliasDownsample(cfg.image_channel, cfg.scale_factor)
        self.temperature = cfg.temperature

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        prediction = self.kp(self.predictor(self.down(image)))
        b, k = prediction.shape[:2]
        # Softmax over the whole volume of each keypoint; a low temperature makes the heatmaps peaked.
        heatmap = F.softmax(prediction.view(b, k, -1) / self.temperature, dim=2).view(prediction.shape)
        return heatmap_to_keypoints(heatmap)
