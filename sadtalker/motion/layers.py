"""Building blocks shared by the audio->expression and audio->pose networks.

Both networks embed each video frame's (1, 80, 16) mel window with the same Wav2Lip-style conv stack, so it is
defined once here.  Attribute names (``conv_block.0`` conv, ``conv_block.1`` BatchNorm) follow the checkpoint keys.
"""

from __future__ import annotations

from torch import Tensor, nn

MEL_BINS = 80
MEL_STEPS = 16
AUDIO_EMBEDDING_DIM = 512


class ConvBlock(nn.Module):
    """Conv2d -> BatchNorm2d (-> + input when ``residual``) -> ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        *,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
            nn.BatchNorm2d(out_channels),
        )
        self.residual = residual
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def mel_window_encoder() -> nn.Sequential:
    """13 conv blocks mapping (N, 1, 80, 16) mel windows to (N, 512, 1, 1) embeddings.

    Spatial path: 80x16 -> (stride 3,1) 27x16 -> (stride 3) 9x6 -> (stride 3,2) 3x3 -> (3x3 valid) 1x1.
    """
    return nn.Sequential(
        ConvBlock(1, 32, 3, 1, 1),
        ConvBlock(32, 32, 3, 1, 1, residual=True),
        ConvBlock(32, 32, 3, 1, 1, residual=True),
        ConvBlock(32, 64, 3, (3, 1), 1),
        ConvBlock(64, 64, 3, 1, 1, residual=True),
        ConvBlock(64, 64, 3, 1, 1, residual=True),
        ConvBlock(64, 128, 3, 3, 1),
        ConvBlock(128, 128, 3, 1, 1, residual=True),
        ConvBlock(128, 128, 3, 1, 1, residual=True),
        ConvBlock(128, 256, 3, (3, 2), 1),
        ConvBlock(256, 256, 3, 1, 1, residual=True),
        ConvBlock(256, 512, 3, 1, 0),
        ConvBlock(512, 512, 1, 1, 0),
    )
