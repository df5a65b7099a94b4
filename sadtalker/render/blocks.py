"""Building blocks shared by the keypoint detector, the dense-motion network and the generator.

Attribute names (``conv``, ``norm``, ``conv1`` ... ``mlp_shared``) are the checkpoint key names of the official
face-render weights, so the modules load those state dicts unchanged.  BatchNorm layers are plain torch
BatchNorm (the upstream SynchronizedBatchNorm has identical keys and identical eval-mode maths); they must run in
eval mode, i.e. with the stored running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Slope of every leaky ReLU inside the SPADE decoder (upstream: F.leaky_relu(x, 2e-1)).
SPADE_LEAKY_SLOPE = 0.2
# Width of the shared hidden layer of each SPADE normaliser.
SPADE_HIDDEN = 128


def coordinate_grid_3d(
    depth: int, height: int, width: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(D, H, W, 3) grid of (x, y, z) coordinates spanning [-1, 1] along each axis (corners included)."""

    def axis(n: int) -> torch.Tensor:
        # Same arithmetic order as upstream (2 * (i / (n - 1)) - 1) so the grid is bitwise identical.
        return 2 * (torch.arange(n, device=device).to(dtype) / (n - 1)) - 1

    x = axis(width).view(1, 1, width).expand(depth, height, width)
    y = axis(height).view(1, height, 1).expand(depth, height, width)
    z = axis(depth).view(depth, 1, 1).expand(depth, height, width)
    return torch.stack([x, y, z], dim=-1)


class SpectralNormConv2d(nn.Module):
    """A Conv2d whose weight was trained under ``torch.nn.utils.spectral_norm``, evaluated in eval mode.

    The checkpoint stores ``weight_orig`` plus the power-iteration vectors ``weight_u`` [out] and
    ``weight_v`` [in*kh*kw].  In eval mode torch uses them as they are (no further power iteration):
    ``W = weight_orig / dot(u, W2 @ v)`` with ``W2 = weight_orig.reshape(out, -1)``.  We compute exactly that,
    without torch's parametrisation hooks, so loading is a plain strict state-dict copy.
    """

    weight_u: torch.Tensor  # buffers (registered in __init__), declared for the type checker
    weight_v: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.padding = padding
        self.dilation = dilation
        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # Buffers, not parameters: they are estimates, never trained directly (same as torch's spectral_norm).
        self.register_buffer("weight_u", torch.zeros(out_channels))
        self.register_buffer("weight_v", torch.zeros(in_channels * kernel_size * kernel_size))

    def normalised_weight(self) -> torch.Tensor:
        """``weight_orig / sigma`` with ``sigma = u . (W2 v)``, in torch's eval-mode op order (mv, then dot)."""
        w2 = self.weight_orig.flatten(1)
        sigma = torch.dot(self.weight_u, torch.mv(w2, self.weight_v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalised_weight(), self.bias, padding=self.padding, dilation=self.dilation)


class SameBlock2d(nn.Module):
    """conv -> BatchNorm -> (leaky) ReLU, spatial size preserved."""

    def __init__(
        self, in_features: int, out_features: int, *, kernel_size: int = 3, padding: int = 1, lrelu: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features)
        # nn.LeakyReLU() default slope 0.01 (upstream uses the default); no parameters, so no keys.
        self.ac: nn.Module = nn.LeakyReLU() if lrelu else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ac(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """conv -> BatchNorm -> ReLU -> 2x2 average pool."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class DownBlock3d(nn.Module):
    """3D conv -> BatchNorm -> ReLU -> average pool over (H, W) only; depth is kept."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), kernel_size=(1, 2, 2))


class UpBlock3d(nn.Module):
    """Nearest 2x upsampling over (H, W) -> 3D conv -> BatchNorm -> ReLU."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block (BN -> ReLU -> conv, twice) that keeps the shape."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(features)
        self.norm2 = nn.BatchNorm3d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


def _hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    """Channel count of hourglass level ``level`` (level 0 is the input resolution)."""
    return min(max_features, block_expansion * (2**level))


class HourglassEncoder(nn.Module):
    """3D U-Net encoder: returns the input followed by every level's output (the decoder's skips)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock3d(
                in_features if i == 0 else _hourglass_width(block_expansion, max_features, i),
                _hourglass_width(block_expansion, max_features, i + 1),
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    """3D U-Net decoder: upsample, concatenate the matching skip, repeat; then conv -> BN -> ReLU."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            # The deepest block sees only the bottleneck; the others see [upsampled, skip] concatenated.
            factor = 1 if i == num_blocks - 1 else 2
            blocks.append(
                UpBlock3d(
                    factor * _hourglass_width(block_expansion, max_features, i + 1),
                    _hourglass_width(block_expansion, max_features, i),
                )
            )
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1]), strict=True):
            out = torch.cat([block(out), skip], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """3D U-Net used by the dense-motion network; output has ``block_expansion + in_features`` channels."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: instance-normalise ``x``, then scale/shift predicted from ``segmap``."""

    def __init__(self, norm_nc: int, label_nc: int) -> None:
        super().__init__()
        # Sequential only to reproduce the checkpoint key names 'mlp_shared.0.*'.
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, SPADE_HIDDEN, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(SPADE_HIDDEN, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(SPADE_HIDDEN, norm_nc, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        # InstanceNorm2d(affine=False, track_running_stats=False): always uses per-sample statistics.
        normalized = F.instance_norm(x, eps=1e-5)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """Residual block with SPADE normalisation and spectral-normalised convolutions."""

    def __init__(self, fin: int, fout: int, label_nc: int) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, 3, padding=1)
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmiddle, label_nc)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
            self.norm_s = SPADE(fin, label_nc)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), SPADE_LEAKY_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), SPADE_LEAKY_SLOPE))
        return shortcut + dx
