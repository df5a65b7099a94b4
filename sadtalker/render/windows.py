"""Face-render inputs from 3DMM coefficients: 27-frame coefficient windows (upstream generate_facerender_batch).

MappingNet looks at a window of 27 consecutive coefficient vectors (radius 13) centred on each frame; windows at
the ends of the video repeat the first/last frame.  The source gets a window of 27 copies of its own coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SEMANTIC_RADIUS = 13
WINDOW = 2 * SEMANTIC_RADIUS + 1
EXP_DIMS = 64  # coefficient columns 0:64 are expression, 64:70 pose (angles, translation), 70:73 crop (s, tx, ty)
POSE_END = 70
FULL_DIMS = 73


@dataclass(frozen=True)
class RenderSemantics:
    """Mapping-net inputs: ``source`` (C, 27) and ``target`` (T, C, 27); C = 70 (crop) or 73 (full)."""

    source: torch.Tensor
    target: torch.Tensor

    @property
    def num_frames(self) -> int:
        return self.target.shape[0]


def frame_windows(coeffs: torch.Tensor, radius: int = SEMANTIC_RADIUS) -> torch.Tensor:
    """(T, C) -> (T, C, 2*radius+1): for each frame the coefficients of frames t-radius..t+radius, edge-clamped."""
    num_frames = coeffs.shape[0]
    offsets = torch.arange(-radius, radius + 1, device=coeffs.device)
    index = (torch.arange(num_frames, device=coeffs.device).unsqueeze(1) + offsets).clamp(0, num_frames - 1)
    return coeffs[index].transpose(1, 2)


def build_semantics(
    coeff_pred: torch.Tensor | np.ndarray,
    source_coeff: torch.Tensor | np.ndarray,
    *,
    full: bool,
    still: bool,
    expression_scale: float = 1.0,
) -> RenderSemantics:
    """Windows for the mapping net.

    ``coeff_pred`` (T, >=70): predicted [exp 64, pose 6] per frame; ``source_coeff`` (1, 73): source
    [exp 64, pose 6, crop 3]; tensors or arrays, used in their own dtype (float32 upstream).  ``full``: preprocess
    contains 'full' (C = 73: the source crop parameters are appended to every frame).  ``still``: every frame takes
    the source's pose (and crop) columns 64: instead of the predicted pose.  ``expression_scale`` multiplies the
    predicted expression (never the source's).
    """
    coeff_pred = torch.as_tensor(coeff_pred)
    source_coeff = torch.as_tensor(source_coeff)
    if coeff_pred.ndim != 2 or coeff_pred.shape[1] < POSE_END or coeff_pred.shape[0] < 1:
        raise ValueError(f"coeff_pred must be (T>=1, >={POSE_END}), got {tuple(coeff_pred.shape)}")
    dims = FULL_DIMS if full else POSE_END
    if source_coeff.ndim != 2 or source_coeff.shape[0] != 1 or source_coeff.shape[1] < dims:
        raise ValueError(f"source_coeff must be (1, >={dims}), got {tuple(source_coeff.shape)}")

    source = source_coeff[:, :dims]
    generated = coeff_pred[:, :POSE_END].clone()
    generated[:, :EXP_DIMS] = generated[:, :EXP_DIMS] * expression_scale
    if full:
        generated = torch.cat([generated, source[:, POSE_END:].expand(generated.shape[0], -1)], dim=1)
    if still:
        generated[:, EXP_DIMS:] = source[:, EXP_DIMS:]

    return RenderSemantics(
        source=source.expand(WINDOW, dims).transpose(0, 1).contiguous(),
        target=frame_windows(generated).contiguous(),
    )
