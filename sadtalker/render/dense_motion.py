"""Dense motion: sparse keypoint motion -> dense 3D warp field + occlusion map.

Checkpoint prefix ``generator.dense_motion_network.``.

For each keypoint k the "sparse motion" maps a driving-space coordinate z to ``z - kp_driving[k] + kp_source[k]``
(plus the identity for the background).  An hourglass looks at the source feature warped by each of these and at
the keypoint heatmaps, and predicts per-voxel soft weights that blend the sparse motions into one dense field.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sadtalker.render.blocks import Hourglass, coordinate_grid_3d

# Variance of the Gaussian drawn around each keypoint in the heatmap representation (normalised coordinates).
KP_VARIANCE = 0.01
# Blend weights below this are dropped (upstream thresholds the softmax mask).
MASK_FLOOR = 1e-3


@dataclass(frozen=True)
class DenseMotionConfig:
    """``dense_motion_params`` of facerender.yaml, plus the generator's num_kp / feature_channel."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16
    compress: int = 4
    num_kp: int = 15
    feature_channel: int = 32
    estimate_occlusion_map: bool = True


@dataclass(frozen=True)
class DenseMotion:
    """Per-frame output of the dense-motion network (batch B)."""

    deformation: torch.Tensor  # (B, D, H, W, 3): source coordinate (x, y, z) to sample for each driving voxel
    occlusion_map: torch.Tensor | None  # (B, 1, H, W) in (0, 1), None when estimate_occlusion_map is off


def keypoint_gaussians(kp: torch.Tensor, spatial_size: tuple[int, int, int]) -> torch.Tensor:
    """Unnormalised Gaussian around each keypoint: (B, K, 3) -> (B, K, D, H, W)."""
    grid = coordinate_grid_3d(*spatial_size, dtype=kp.dtype, device=kp.device)
    diff = grid.view(1, 1, *spatial_size, 3) - kp.view(*kp.shape[:2], 1, 1, 1, 3)
    return torch.exp(-0.5 * (diff**2).sum(-1) / KP_VARIANCE)


class DenseMotionNetwork(nn.Module):
    def __init__(self, cfg: DenseMotionConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DenseMotionConfig()
        self.num_kp = cfg.num_kp
        in_features = (cfg.num_kp + 1) * (cfg.compress + 1)  # per motion: 1 heatmap + compressed feature channels
        self.hourglass = Hourglass(cfg.block_expansion, in_features, cfg.num_blocks, cfg.max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, cfg.num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(cfg.feature_channel, cfg.compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(cfg.compress)
        self.occlusion = (
            nn.Conv2d(self.hourglass.out_filters * cfg.reshape_depth, 1, kernel_size=7, padding=3)
            if cfg.estimate_occlusion_map
            else None
        )

    def compress_feature(self, feature_3d: torch.Tensor) -> torch.Tensor:
        """Source feature volume (B, C, D, H, W) -> the few channels the motion estimate looks at.

        Depends only on the source image, so the renderer computes it once per source.
        """
        return F.relu(self.norm(self.compress(feature_3d)))

    def sparse_motions(
        self, shape: tuple[int, int, int], kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> torch.Tensor:
        """(B, K+1, D, H, W, 3): the identity (background) followed by one rigid shift per keypoint."""
        batch = kp_driving.shape[0]
        identity = coordinate_grid_3d(*shape, dtype=kp_driving.dtype, device=kp_driving.device).view(1, 1, *shape, 3)
        # Same op order as upstream: (z - kp_driving) + kp_source.
        per_kp = identity - kp_driving.view(batch, self.num_kp, 1, 1, 1, 3)
        per_kp = per_kp + kp_source.view(-1, self.num_kp, 1, 1, 1, 3)
        return torch.cat([identity.expand(batch, 1, *shape, 3), per_kp], dim=1)

    def warp_per_motion(self, feature: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
        """Sample ``feature`` (1 or B, C, D, H, W) with each motion -> (B, K+1, C, D, H, W)."""
        batch, n_motion = motions.shape[:2]
        shape = motions.shape[2:5]
        channels = feature.shape[1]
        repeated = feature.unsqueeze(1).expand(batch, n_motion, channels, *shape)
        repeated = repeated.reshape(batch * n_motion, channels, *shape)
        warped = F.grid_sample(repeated, motions.reshape(batch * n_motion, *shape, 3), align_corners=False)
        return warped.reshape(batch, n_motion, channels, *shape)

    def heatmap_representation(
        self, shape: tuple[int, int, int], kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> torch.Tensor:
        """(B, K+1, 1, D, H, W): driving-minus-source keypoint Gaussians, with a zero map for the background."""
        heatmap = keypoint_gaussians(kp_driving, shape) - keypoint_gaussians(kp_source, shape)
        background = torch.zeros_like(heatmap[:, :1])
        return torch.cat([background, heatmap], dim=1).unsqueeze(2)

    def forward(self, compressed: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> DenseMotion:
        """``compressed`` (1 or B, c, D, H, W) from :meth:`compress_feature`; keypoints (1 or B, K, 3) / (B, K, 3)."""
        batch = kp_driving.shape[0]
        shape: tuple[int, int, int] = tuple(compressed.shape[2:])  # type: ignore[assignment]

        motions = self.sparse_motions(shape, kp_source, kp_driving)
        warped = self.warp_per_motion(compressed, motions)
        heatmap = self.heatmap_representation(shape, kp_source, kp_driving)
        prediction = self.hourglass(torch.cat([heatmap, warped], dim=2).reshape(batch, -1, *shape))

        mask = F.softmax(self.mask(prediction), dim=1).unsqueeze(2)  # (B, K+1, 1, D, H, W)
        mask = torch.where(mask < MASK_FLOOR, torch.zeros_like(mask), mask)
        deformation = (motions.permute(0, 1, 5, 2, 3, 4) * mask).sum(dim=1).permute(0, 2, 3, 4, 1)

        occlusion_map = None
        if self.occlusion is not None:
            # The whole (channels x depth) stack of the hourglass output sees each pixel column at once.
            flat = prediction.reshape(batch, -1, *shape[1:])
            occlusion_map = torch.sigmoid(self.occlusion(flat))
        return DenseMotion(deformation=deformation, occlusion_map=occlusion_map)
