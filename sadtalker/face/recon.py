"""The 3DMM coefficient regressor (Deep3DFaceRecon's ReconNet) stored under ``face_3drecon.`` in the checkpoint.

A torchvision-layout ResNet-50 trunk (no fc) followed by seven parallel 1x1 convolutions whose outputs are
concatenated into the 257 BFM coefficients: id 80, exp 64, tex 80, angle 3, gamma 27, translation 2 + 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from sadtalker.weights import load_strict, take_prefix

PREFIX = "face_3drecon"
HEAD_SIZES = (80, 64, 80, 3, 27, 2, 1)  # id, exp, tex, angle, gamma, (tx, ty), tz
NUM_COEFFS = sum(HEAD_SIZES)  # 257
TRUNK_CHANNELS = 2048

# Slices of the 257 coefficients (model_configs.json "full_257_layout").
EXP = slice(80, 144)
ANGLE = slice(224, 227)
TRANS = slice(254, 257)


class _ResNet50Trunk(ResNet):
    """ResNet-50 up to global average pooling; parameter names match torchvision (``conv1``, ``layer1.0.*``...)."""

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])
        del self.fc  # the checkpoint has no classifier: the 1x1 heads replace it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)  # (B, 2048, 1, 1)


class ReconNet(nn.Module):
    """Image (B, 3, 224, 224) RGB in [0, 1] -> (B, 257) 3DMM coefficients."""

    def __init__(
        self,
        checkpoint: Mapping[str, torch.Tensor],
        *,
        source: str = "SadTalker safetensors",
        device: str | torch.device = "cpu",
    ) -> None:
        """Build and strictly load from the already-read SadTalker safetensors dict (all prefixes; the
        ``face_3drecon.`` tensors are taken from it).  ``source`` names the file in error messages."""
        super().__init__()
        self.backbone = _ResNet50Trunk()
        self.final_layers = nn.ModuleList(nn.Conv2d(TRUNK_CHANNELS, n, kernel_size=1, bias=True) for n in HEAD_SIZES)
        load_strict(self, take_prefix(checkpoint, PREFIX), f"{source}[{PREFIX}.]")
        self.to(device)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image)
        return torch.cat([head(features) for head in self.final_layers], dim=1).flatten(1)

    def coefficients(self, image_224: np.ndarray) -> np.ndarray:
        """(224, 224, 3) uint8 RGB -> (1, 257) float32."""
        if image_224.shape != (224, 224, 3):
            raise ValueError(f"expected a (224, 224, 3) image; got {image_224.shape}")
        # /255 in float64 then float32, exactly as the original builds its input tensor.
        scaled = (np.asarray(image_224) / 255.0).astype(np.float32)
        batch = torch.from_numpy(scaled).permute(2, 0, 1).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            return self(batch).cpu().numpy()


def source_coefficients(coeff_257: np.ndarray, trans_params: np.ndarray) -> np.ndarray:
    """(1, 73) float32 = [exp 64, angle 3, trans 3, s, tx, ty]: what the motion and render stages use.

    The first 70 columns are the reference coefficients; the crop parameters come from ``trans_params``
    [w0, h0, s, tx, ty] rounded to float32 as in the original.
    """
    coeff = np.asarray(coeff_257, dtype=np.float32).reshape(1, NUM_COEFFS)
    params = np.asarray(trans_params, dtype=np.float64).reshape(5).astype(np.float32)
    return np.concatenate([coeff[:, EXP], coeff[:, ANGLE], coeff[:, TRANS], params[None, 2:]], axis=1)
