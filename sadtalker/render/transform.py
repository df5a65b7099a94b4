"""Canonical keypoints + MappingNet outputs -> posed keypoints (upstream make_animation.keypoint_transformation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sadtalker.render.mapping import MappingOutput

# Upstream converts degrees to radians with 3.14, not pi; keeping it is part of reproducing its keypoints.
_PI_UPSTREAM = 3.14
# Bin i of the pose classifier stands for (3*i - 99) degrees.
_BIN_DEGREES = 3
_BIN_OFFSET_DEGREES = 99


def logits_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """Pose-bin logits (B, bins) -> expected angle in degrees (B,): softmax expectation over the bin indices."""
    bins = torch.arange(logits.shape[1], device=logits.device).to(logits.dtype)
    return torch.sum(F.softmax(logits, dim=1) * bins, 1) * _BIN_DEGREES - _BIN_OFFSET_DEGREES


def rotation_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Angles in degrees (B,) -> (B, 3, 3) rotation ``R_pitch(x) @ R_yaw(y) @ R_roll(z)``."""
    yaw, pitch, roll = (angle / 180 * _PI_UPSTREAM for angle in (yaw, pitch, roll))
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)

    def matrix(*rows: torch.Tensor) -> torch.Tensor:
        return torch.stack(rows, dim=1).view(-1, 3, 3)

    cp, sp, cy, sy, cr, sr = pitch.cos(), pitch.sin(), yaw.cos(), yaw.sin(), roll.cos(), roll.sin()
    pitch_mat = matrix(one, zero, zero, zero, cp, -sp, zero, sp, cp)
    yaw_mat = matrix(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    roll_mat = matrix(cr, -sr, zero, sr, cr, zero, zero, zero, one)
    return torch.einsum("bij,bjk,bkm->bim", pitch_mat, yaw_mat, roll_mat)


def transform_keypoints(
    kp_canonical: torch.Tensor,
    pose: MappingOutput,
    *,
    yaw_degrees: torch.Tensor | None = None,
    pitch_degrees: torch.Tensor | None = None,
    roll_degrees: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate, translate and deform canonical keypoints (1 or B, K, 3) with ``pose`` (batch B) -> (B, K, 3).

    ``*_degrees`` (B,) replace the predicted angle of that axis (upstream ``yaw_c_seq`` ... free-view control).
    Only the y component of the predicted translation is used: upstream zeroes x and z.
    """
    yaw = logits_to_degrees(pose.yaw) if yaw_degrees is None else yaw_degrees
    pitch = logits_to_degrees(pose.pitch) if pitch_degrees is None else pitch_degrees
    roll = logits_to_degrees(pose.roll) if roll_degrees is None else roll_degrees
    rot = rotation_matrix(yaw, pitch, roll)

    batch, num_kp = rot.shape[0], kp_canonical.shape[1]
    kp = kp_canonical.expand(batch, num_kp, 3)
    kp_rotated = torch.einsum("bmp,bkp->bkm", rot, kp)

    # Multiply (not assign) so the values match upstream's ``t[:, 0] = t[:, 0] * 0`` exactly; no in-place edit
    # of the caller's tensor (upstream mutates the mapping output it was given).
    keep_y = torch.tensor([0.0, 1.0, 0.0], dtype=pose.t.dtype, device=pose.t.device)
    t = (pose.t * keep_y).unsqueeze(1)
    return kp_rotated + t + pose.exp.view(batch, -1, 3)
