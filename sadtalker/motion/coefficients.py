"""Motion stage entry point: audio features + source coefficients -> per-frame 3DMM coefficients (T, 70).

Mirrors upstream ``get_data`` + ``Audio2Coeff.generate`` (no reference eye-blink / pose video):
* reference = the source image's first 70 coefficients: expression [0:64], pose [64:70] (angles 3, translation 3);
* expression = audio2exp(mel windows, reference expression, blink ratio); no blinks when ``still``;
* pose = reference pose + audio2pose motion (frame 0 moves 0), then a Savitzky-Golay smoothing along time;
* coeff_pred = [expression 64, smoothed pose 6].
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import savgol_filter
from torch import Tensor

from sadtalker.audio import AudioFeatures
from sadtalker.motion.audio2exp import EXP_DIM, Audio2ExpNet, predict_expression
from sadtalker.motion.audio2pose import (
    LATENT_DIM,
    POSE_DIM,
    Audio2PoseNet,
    check_pose_style,
    draw_pose_noise,
    num_pose_chunks,
    predict_pose_motion,
)
from sadtalker.motion.blink import generate_blink_ratio

COEFF_DIM = EXP_DIM + POSE_DIM  # 70
SAVGOL_WINDOW = 13
SAVGOL_ORDER = 2

PoseNoise = np.ndarray | Tensor | Sequence[np.ndarray | Tensor]


@dataclass(frozen=True)
class MotionResult:
    """Per-frame coefficients plus every intermediate, float32 numpy (``sadtalker.conformance`` maps them to the
    reference kit's golden keys)."""

    blink_ratio: np.ndarray  # (T,) ratio actually fed to audio2exp
    expression: np.ndarray  # (T, 64)
    pose_noise: np.ndarray  # (n_chunks, 64) CVAE noise in call order
    pose_audio_embedding: np.ndarray  # (n_chunks, 32, 512)
    pose_chunk_motion: np.ndarray  # (n_chunks, 32, 6)
    pose_motion: np.ndarray  # (T, 6), frame 0 = 0
    pose_raw: np.ndarray  # (T, 6) reference pose + motion
    pose_smoothed: np.ndarray  # (T, 6) smoothed
    coefficients: np.ndarray  # (T, 70) = [expression, smoothed pose]

    @property
    def num_frames(self) -> int:
        return self.coefficients.shape[0]


def savgol_window(num_frames: int) -> int:
    """13, or the largest odd number <= T for shorter clips (upstream rule)."""
    return SAVGOL_WINDOW if num_frames >= SAVGOL_WINDOW else (num_frames - 1) // 2 * 2 + 1


def smooth_pose(pose: np.ndarray) -> np.ndarray:
    """Savitzky-Golay (order 2) along time of a (T, 6) float32 pose track.

    A window of <= 2 frames cannot hold an order-2 fit (upstream crashes for T <= 2); such a fit would be the
    identity anyway, as it is for window 3, so those tracks are returned unchanged.
    """
    window = savgol_window(pose.shape[0])
    if window <= SAVGOL_ORDER:
        return pose.copy()
    # float32 in, like upstream (np.array of a float32 tensor), so scipy's float32 path and rounding match.
    return savgol_filter(pose, window, SAVGOL_ORDER, axis=0).astype(np.float32, copy=False)


def _reference_coeff(source_coeff: np.ndarray | Tensor) -> np.ndarray:
    coeff = np.asarray(source_coeff, dtype=np.float32)
    if coeff.ndim == 2 and coeff.shape[0] == 1:
        coeff = coeff[0]
    if coeff.ndim != 1 or coeff.shape[0] < COEFF_DIM:
        raise ValueError(f"source coefficients must be (73,) or (1, 73) (>= {COEFF_DIM} columns), got {coeff.shape}")
    return coeff[:COEFF_DIM]


def _resolve_blink(
    num_frames: int, blink_ratio: np.ndarray | None, blink_rng: random.Random | np.random.Generator | None, still: bool
) -> np.ndarray:
    """The ratio fed to audio2exp.

    An explicit ``blink_ratio`` is used verbatim, whatever ``still`` says (that is what the reference goldens
    record: their still case feeds its drawn, non-zero ratio).  Otherwise ``still`` means no blinking (upstream
    zeroes the drawn schedule in still mode) and a normal clip draws a schedule from ``blink_rng``.
    """
    if blink_ratio is not None:
        ratio = np.array(blink_ratio, dtype=np.float32).reshape(-1)  # a copy: the result must not alias input
        if ratio.shape != (num_frames,):
            raise ValueError(f"blink_ratio must have {num_frames} values, got shape {np.shape(blink_ratio)}")
        return ratio
    if still:
        return np.zeros(num_frames, dtype=np.float32)
    if blink_rng is None:
        raise ValueError("pass blink_ratio or blink_rng (a seeded random.Random / numpy Generator)")
    return generate_blink_ratio(num_frames, blink_rng)


def _resolve_pose_noise(num_frames: int, pose_noise: PoseNoise | None, generator: torch.Generator | None) -> Tensor:
    if pose_noise is None:
        if generator is None:
            raise ValueError("pass pose_noise or generator (a seeded torch.Generator)")
        return draw_pose_noise(num_frames, generator)
    if isinstance(pose_noise, np.ndarray | Tensor):
        noise = torch.as_tensor(pose_noise, dtype=torch.float32)
    else:
        rows = [torch.as_tensor(z, dtype=torch.float32).reshape(-1) for z in pose_noise]
        noise = torch.stack(rows) if rows else torch.zeros(0, LATENT_DIM)
    expected = (num_pose_chunks(num_frames), LATENT_DIM)
    if tuple(noise.shape) != expected:
        raise ValueError(f"pose_noise must be {expected} for {num_frames} frames, got {tuple(noise.shape)}")
    return noise


def predict_motion(
    features: AudioFeatures,
    source_coeff_73: np.ndarray | Tensor,
    *,
    pose_style: int,
    audio2exp: Audio2ExpNet,
    audio2pose: Audio2PoseNet,
    still: bool = False,
    blink_ratio: np.ndarray | None = None,
    blink_rng: random.Random | np.random.Generator | None = None,
    pose_noise: PoseNoise | None = None,
    generator: torch.Generator | None = None,
    ref_expression: np.ndarray | None = None,
) -> MotionResult:
    """Per-frame expression + pose coefficients for one clip.

    Randomness is explicit: give ``blink_ratio`` (T,) or a ``blink_rng``; give ``pose_noise`` (one 64-vector per
    CVAE chunk, see ``num_pose_chunks``) or a ``generator`` to draw it from.  ``still`` disables drawn blinks.
    Seeds matching upstream's: ``blink_rng=random.Random(0)``, ``generator=torch.Generator().manual_seed(0)``.
    ``ref_expression`` (T, 64): per-frame reference expression from a ``ref_eyeblink`` video (see
    ``sadtalker.motion.reference``); like upstream it replaces audio2exp's reference input and zeroes the blink
    ratio (``ratio[:num_frames] = 0``), whatever ``blink_ratio``/``blink_rng`` say.
    """
    check_pose_style(pose_style)
    num_frames = features.num_frames
    ref = _reference_coeff(source_coeff_73)
    ratio = _resolve_blink(num_frames, blink_ratio, blink_rng, still)
    if ref_expression is not None:
        ref_expression = np.asarray(ref_expression, dtype=np.float32)
        if ref_expression.shape != (num_frames, EXP_DIM):
            raise ValueError(f"ref_expression must be ({num_frames}, {EXP_DIM}), got {ref_expression.shape}")
        ratio = np.zeros(num_frames, dtype=np.float32)
    noise = _resolve_pose_noise(num_frames, pose_noise, generator)

    device = next(audio2exp.parameters()).device
    mels = torch.from_numpy(np.ascontiguousarray(features.indiv_mels, dtype=np.float32)).to(device)
    ref_t = torch.from_numpy(ref).to(device)
    ref_exp = ref_t[:EXP_DIM] if ref_expression is None else torch.from_numpy(ref_expression).to(device)
    expression = predict_expression(audio2exp, mels, ref_exp, torch.from_numpy(ratio).to(device))
    pose = predict_pose_motion(audio2pose, mels, ref_t[EXP_DIM:], pose_style, noise.to(device))

    motion = pose.motion.cpu().numpy()
    pose_raw = (ref_t[EXP_DIM:] + pose.motion).cpu().numpy()
    pose_smooth = smooth_pose(pose_raw)
    exp = expression.cpu().numpy()
    return MotionResult(
        blink_ratio=ratio,
        expression=exp,
        pose_noise=noise.cpu().numpy(),
        pose_audio_embedding=pose.audio_emb.cpu().numpy(),
        pose_chunk_motion=pose.chunk_motion.cpu().numpy(),
        pose_motion=motion,
        pose_raw=pose_raw,
        pose_smoothed=pose_smooth,
        coefficients=np.concatenate([exp, pose_smooth], axis=1),
    )
