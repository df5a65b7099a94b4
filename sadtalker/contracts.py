"""Values and shapes every stage (and the service) agrees on, each defined once.

Light on purpose (numpy only): the service's API process imports it without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

FPS = 25
"""Video frames per second: SadTalker's audio windows, motion and encoder all assume 25."""
SAMPLE_RATE = 16_000
"""Audio samples per second every stage works at (inputs are resampled to it)."""
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
"""640: the audio under one video frame, and the shortest audio that still gives a frame."""

CROP_COEFFS = 70
"""Coefficients per frame the crop/resize mapping net takes: expression 64 + pose 6 (mapping_00229)."""
FULL_COEFFS = 73
"""Coefficients per frame the full mapping net takes: the crop's 70 + the crop parameters s, tx, ty (mapping_00109)."""

Preprocess = Literal["crop", "full", "resize", "extcrop", "extfull"]
"""How the source photo is cut (the original's ``--preprocess``)."""
PREPROCESS_MODES: tuple[str, ...] = get_args(Preprocess)

LANDMARK_COUNT = 68


@dataclass(frozen=True)
class ProgressReport:
    """Where a render is: what the pipeline hands its progress callback."""

    stage: str
    """One of ``sadtalker.pipeline.STAGES``."""
    fraction: float
    """Share of the whole job done, 0..1, never decreasing."""
    frames_written: int = 0
    """Frames handed to the encoder so far (cumulative: counted when the encoder's write returned)."""
    frames_total: int | None = None
    """Frames the video will have; None until the render stage knows it."""


ProgressCallback = Callable[[ProgressReport], None]
"""Called as ``progress(report)`` between frames of the render (and between faces of the enhancer); raising from
it stops the render there, and the exception propagates out of ``generate`` with no partial output left.

The same report may come again (a stop check with nothing new to say). Calls come from the thread running
``generate`` and from the encoder's thread, but never at the same time (the pipeline serialises them).
"""

StopCheck = Callable[[], None]
"""A callable a long stage (the enhancer) calls between units of work (faces); it raises to stop the stage."""


def coeff_count(preprocess: str) -> int:
    """Coefficients per frame for a preprocess mode: SadTalker takes the 73 whenever the mode contains 'full'."""
    return FULL_COEFFS if "full" in preprocess else CROP_COEFFS


def check_landmarks(landmarks: object, name: str = "landmarks") -> np.ndarray:
    """(68, 2) finite float32 landmarks in pixel coordinates (x right, y down); ValueError naming ``name`` if not."""
    array = np.asarray(landmarks)
    if array.shape != (LANDMARK_COUNT, 2):
        raise ValueError(f"{name} must have shape ({LANDMARK_COUNT}, 2) (x, y in pixels); got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contain NaN or infinite values")
    # The original's landmarks are float32 (landmark_98_to_68 output); keep that so every later rounding matches.
    return array.astype(np.float32, copy=False)
