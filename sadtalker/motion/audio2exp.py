"""Audio -> expression network (upstream ``SimpleWrapperV2``, checkpoint prefix ``audio2exp.``).

Per frame: embed the frame's mel window (512), append the reference expression (64) and the eye-blink ratio (1),
and map the 577 values linearly to the frame's 64 expression coefficients.  Frames are independent.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from sadtalker.motion.layers import AUDIO_EMBEDDING_DIM, MEL_BINS, MEL_STEPS, mel_window_encoder
from sadtalker.weights import load_strict, take_prefix

CHECKPOINT_PREFIX = "audio2exp"
EXP_DIM = 64
# Upstream feeds the network 10 frames at a time; kept so op shapes (and hence float rounding) match it.
FRAMES_PER_CHUNK = 10


class Audio2ExpNet(nn.Module):
    """Mel window + reference expression + blink ratio -> 64 expression coefficients."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = mel_window_encoder()
        self.mapping1 = nn.Linear(AUDIO_EMBEDDING_DIM + EXP_DIM + 1, EXP_DIM)

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Tensor], source: str = "SadTalker safetensors") -> Audio2ExpNet:
        """Build from the already-read SadTalker safetensors dict (all prefixes), strictly, in eval mode."""
        model = cls()
        load_strict(model, take_prefix(checkpoint, CHECKPOINT_PREFIX), f"{source}[{CHECKPOINT_PREFIX}.]")
        return model.eval().requires_grad_(False)

    def forward(self, mel_windows: Tensor, ref_exp: Tensor, blink_ratio: Tensor) -> Tensor:
        """(N, 1, 80, 16), (N, 64), (N, 1) -> (N, 64)."""
        audio = self.audio_encoder(mel_windows).flatten(1)
        return self.mapping1(torch.cat([audio, ref_exp, blink_ratio], dim=1))


def predict_expression(model: Audio2ExpNet, indiv_mels: Tensor, ref_exp: Tensor, blink_ratio: Tensor) -> Tensor:
    """Expression coefficients for every frame, computed in 10-frame chunks like upstream.

    ``indiv_mels`` (T, 80, 16), ``ref_exp`` (64,) the source image's expression, or (T, 64) one reference
    expression per frame (upstream's ``ref_eyeblink``), ``blink_ratio`` (T,).
    Returns (T, 64) float32.
    """
    num_frames = indiv_mels.shape[0]
    if indiv_mels.shape[1:] != (MEL_BINS, MEL_STEPS):
        raise ValueError(f"indiv_mels must be (T, {MEL_BINS}, {MEL_STEPS}), got {tuple(indiv_mels.shape)}")
    if ref_exp.shape not in ((EXP_DIM,), (num_frames, EXP_DIM)):
        raise ValueError(f"ref_exp must be ({EXP_DIM},) or ({num_frames}, {EXP_DIM}), got {tuple(ref_exp.shape)}")
    if blink_ratio.shape != (num_frames,):
        raise ValueError(f"blink_ratio must be ({num_frames},), got {tuple(blink_ratio.shape)}")
    chunks: list[Tensor] = []
    with torch.inference_mode():
        for start in range(0, num_frames, FRAMES_PER_CHUNK):
            mels = indiv_mels[start : start + FRAMES_PER_CHUNK].unsqueeze(1)
            count = mels.shape[0]
            ref = ref_exp[start : start + count] if ref_exp.ndim == 2 else ref_exp.unsqueeze(0).expand(count, EXP_DIM)
            ratio = blink_ratio[start : start + count].unsqueeze(1)
            chunks.append(model(mels, ref, ratio))
    return torch.cat(chunks, dim=0)
