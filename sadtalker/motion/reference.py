"""Reference-video coefficients used as the original uses them (``--ref_eyeblink``, ``--ref_pose``).

Both take the reference video's per-frame 3DMM coefficients (N, 73) = [exp 64, angles 3, trans 3, crop 3]
(``sadtalker.face.reference``) and fit them to the T frames of the audio the way the original does:

* **length**: a reference shorter than the audio is repeated from its start (``div`` whole copies + the first
  ``T % N`` rows, ``get_data`` / ``using_refpose``), a longer one is cut to its first T frames.  Only the first
  T frames matter, so callers may stop decoding a long reference after T frames.
* ``ref_eyeblink`` (``get_data``): ALL 64 expression columns of audio2exp's per-frame reference input are
  replaced by the reference's expression (not only eye-related ones), and the blink ratio is zeroed; the pose
  columns of the reference input (what audio2pose reads) stay the source image's.
* ``ref_pose`` (``Audio2Coeff.using_refpose``): after the Savitzky-Golay smoothing, the reference's pose
  relative to its first frame, ``ref[t, 64:70] - ref[0, 64:70]``, is added to the predicted pose (angles and
  translation).  Applied to ``coeff_pred``, so it has no effect in still mode (the renderer then takes the
  source's pose), exactly as in the original.
"""

from __future__ import annotations

import numpy as np

EXP_END = 64
POSE_END = 70


def fit_to_length(coeffs: np.ndarray, num_frames: int) -> np.ndarray:
    """The first ``num_frames`` rows of ``coeffs`` repeated from the start as often as needed (upstream tiling)."""
    coeffs = np.asarray(coeffs)
    if coeffs.ndim != 2 or coeffs.shape[0] < 1:
        raise ValueError(f"reference coefficients must be (N >= 1, C), got {coeffs.shape}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return coeffs[np.arange(num_frames) % coeffs.shape[0]]


def reference_expression(ref_coeff: np.ndarray, num_frames: int) -> np.ndarray:
    """(T, 64) float32: audio2exp's per-frame reference expression from a ``ref_eyeblink`` video's (N, >=64)."""
    ref = np.asarray(ref_coeff, dtype=np.float32)
    if ref.ndim != 2 or ref.shape[1] < EXP_END:
        raise ValueError(f"reference coefficients must be (N, >= {EXP_END}), got {ref.shape}")
    return np.ascontiguousarray(fit_to_length(ref[:, :EXP_END], num_frames))


def apply_reference_pose(coeff_pred: np.ndarray, ref_coeff: np.ndarray) -> np.ndarray:
    """``coeff_pred`` (T, 70) with the reference video's relative pose added to columns 64:70 (a new array).

    float32 throughout and the same operation order as upstream: ``pred + (ref[:T] - ref[0:1])``.
    """
    pred = np.array(coeff_pred, dtype=np.float32)  # copy: the caller's array is not modified
    ref = np.asarray(ref_coeff, dtype=np.float32)
    if pred.ndim != 2 or pred.shape[1] < POSE_END:
        raise ValueError(f"coeff_pred must be (T, >= {POSE_END}), got {pred.shape}")
    if ref.ndim != 2 or ref.shape[1] < POSE_END:
        raise ValueError(f"reference coefficients must be (N, >= {POSE_END}), got {ref.shape}")
    pose = fit_to_length(ref[:, EXP_END:POSE_END], pred.shape[0])
    pred[:, EXP_END:POSE_END] = pred[:, EXP_END:POSE_END] + (pose - pose[0:1])
    return pred
