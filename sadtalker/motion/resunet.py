"""The small residual U-Net of the pose CVAE (upstream ``ResUnet``), over a (1, seq_len, 6) "image".

Down/up-sampling acts on the time axis only (stride (2, 1)), so ``seq_len`` must be divisible by 8.
Attribute names mirror the checkpoint keys (``input_layer.0``, ``residual_conv_1.conv_block.2``, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

TIME_STRIDE = (2, 1)


class ResidualConv(nn.Module):
    """Pre-activation residual block: (BN, ReLU, conv, BN, ReLU, conv) + (conv, BN) skip."""

    def __init__(self, in_channels: int, out_channels: int, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        self.conv_skip = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_block(x) + self.conv_skip(x)


class TimeUpsample(nn.Module):
    """Transposed conv doubling the time axis (kernel = stride = (2, 1))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(channels, channels, kernel_size=TIME_STRIDE, stride=TIME_STRIDE)

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample(x)


class ResUnet(nn.Module):
    """(B, 1, L, W) -> (B, 1, L, W) in (0, 1) (sigmoid output)."""

    def __init__(self, filters: tuple[int, int, int, int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        f0, f1, f2, f3 = filters
        self.input_layer = nn.Sequential(
            nn.Conv2d(1, f0, kernel_size=3, padding=1),
            nn.BatchNorm2d(f0),
            nn.ReLU(),
            nn.Conv2d(f0, f0, kernel_size=3, padding=1),
        )
        self.input_skip = nn.Sequential(nn.Conv2d(1, f0, kernel_size=3, padding=1))
        self.residual_conv_1 = ResidualConv(f0, f1, TIME_STRIDE)
        self.residual_conv_2 = ResidualConv(f1, f2, TIME_STRIDE)
        self.bridge = ResidualConv(f2, f3, TIME_STRIDE)
        self.upsample_1 = TimeUpsample(f3)
        self.up_residual_conv1 = ResidualConv(f3 + f2, f2, 1)
        self.upsample_2 = TimeUpsample(f2)
        self.up_residual_conv2 = ResidualConv(f2 + f1, f1, 1)
        self.upsample_3 = TimeUpsample(f1)
        self.up_residual_conv3 = ResidualConv(f1 + f0, f0, 1)
        self.output_layer = nn.Sequential(nn.Conv2d(f0, 1, kernel_size=1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        skip1 = self.input_layer(x) + self.input_skip(x)
        skip2 = self.residual_conv_1(skip1)
        skip3 = self.residual_conv_2(skip2)
        y = self.bridge(skip3)
        # Decoder: upsample, concatenate the encoder feature of the same resolution, fuse.
        y = self.up_residual_conv1(torch.cat([self.upsample_1(y), skip3], dim=1))
        y = self.up_residual_conv2(torch.cat([self.upsample_2(y), skip2], dim=1))
        y = self.up_residual_conv3(torch.cat([self.upsample_3(y), skip1], dim=1))
        return self.output_layer(y)
