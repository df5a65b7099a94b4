"""MappingNet: a 27-frame window of 3DMM coefficients -> head pose and expression for the face renderer.

Weights come from ``mapping_00229-model.pth.tar`` (coeff_nc 70) or ``mapping_00109-model.pth.tar`` (coeff_nc 73),
key ``['mapping']``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NUM_BINS = 66  # head-pose classification bins of 3 degrees, covering [-99, 99)


@dataclass(frozen=True)
class MappingConfig:
    """``mapping_params`` of facerender.yaml (coeff_nc 70) / facerender_still.yaml (coeff_nc 73)."""

    coeff_nc: int = 70
    descriptor_nc: int = 1024
    layer: int = 3
    num_kp: int = 15
    num_bins: int = NUM_BINS


@dataclass(frozen=True)
class MappingOutput:
    """Raw MappingNet outputs for a batch of B windows (logits, not yet degrees)."""

    yaw: torch.Tensor  # (B, num_bins) logits
    pitch: torch.Tensor  # (B, num_bins) logits
    roll: torch.Tensor  # (B, num_bins) logits
    t: torch.Tensor  # (B, 3) translation, before the x/z components are zeroed
    exp: torch.Tensor  # (B, 3*num_kp) per-keypoint expression offsets

    def select(self, index: slice | torch.Tensor) -> MappingOutput:
        """The outputs of a subset of the batch."""
        return MappingOutput(self.yaw[index], self.pitch[index], self.roll[index], self.t[index], self.exp[index])


class MappingNet(nn.Module):
    """Temporal conv encoder over the window, average-pooled, then five linear heads."""

    def __init__(self, cfg: MappingConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MappingConfig()
        self.layer = cfg.layer
        # Sequentials only to reproduce the checkpoint keys 'first.0.*' and 'encoder<i>.1.*'.
        self.first = nn.Sequential(nn.Conv1d(cfg.coeff_nc, cfg.descriptor_nc, kernel_size=7))
        for i in range(cfg.layer):
            block = nn.Sequential(
                nn.LeakyReLU(0.1), nn.Conv1d(cfg.descriptor_nc, cfg.descriptor_nc, kernel_size=3, dilation=3)
            )
            self.add_module(f"encoder{i}", block)
        self.fc_roll = nn.Linear(cfg.descriptor_nc, cfg.num_bins)
        self.fc_pitch = nn.Linear(cfg.descriptor_nc, cfg.num_bins)
        self.fc_yaw = nn.Linear(cfg.descriptor_nc, cfg.num_bins)
        self.fc_t = nn.Linear(cfg.descriptor_nc, 3)
        self.fc_exp = nn.Linear(cfg.descriptor_nc, 3 * cfg.num_kp)

    def forward(self, window: torch.Tensor) -> MappingOutput:
        """``window`` (B, coeff_nc, 27) -> raw outputs for each of the B windows."""
        out = self.first(window)
        for i in range(self.layer):
            # Unpadded dilated conv shortens the sequence by 6: the residual is the centre crop.
            out = getattr(self, f"encoder{i}")(out) + out[:, :, 3:-3]
        out = F.adaptive_avg_pool1d(out, 1).flatten(1)  # average over what is left of the window
        return MappingOutput(
            yaw=self.fc_yaw(out),
            pitch=self.fc_pitch(out),
            roll=self.fc_roll(out),
            t=self.fc_t(out),
            exp=self.fc_exp(out),
        )
