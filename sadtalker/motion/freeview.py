"""Free-view head angles: the original's ``--input_yaw/--input_pitch/--input_roll`` lists -> one angle per frame.

The original (``gen_camera_pose`` in ``src/generate_facerender_batch.py``) turns a list of angles in degrees into a
per-frame sequence that replaces the predicted yaw/pitch/roll of every driving frame:

* one value: that angle for every frame;
* several values: a piecewise-linear sweep through the values.  Frames are shared out in proportion to each
  segment's angular distance: ``step = sum(|d[i+1] - d[i]|) / (T - 1)`` degrees per frame, and each segment
  contributes ``np.arange(d[i], d[i+1], ±step)`` (its end value excluded, so the last listed angle is only
  reached through the padding below).  The concatenation is cut to T frames, or padded with its last value.

Quirks kept because they change numbers without failing: the float ``np.arange`` lengths (a segment may get one
frame more or less than its share), the excluded end values, the last-value padding, float32 angles.
Crashes fixed (README "Where we differ"): two equal neighbouring values (the original divides by their zero
difference) contribute no frames, as their zero angular distance gives them; a list whose values are all equal,
or a one-frame clip (the original divides by T - 1 = 0), gives the first value for every frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sadtalker.render.renderer import PoseOverride


def camera_angles(degrees: Sequence[float], num_frames: int) -> np.ndarray:
    """(num_frames,) float32 angles in degrees for one axis, as the original interpolates ``degrees``."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    values = [float(v) for v in degrees]
    if not values:
        raise ValueError("at least one angle is needed")
    total = 0.0
    for previous, current in zip(values, values[1:], strict=False):
        total += abs(current - previous)
    if len(values) == 1 or total == 0.0 or num_frames == 1:
        return np.full(num_frames, values[0], dtype=np.float32)

    per_frame = total / (num_frames - 1)
    sequence: list[float] = []
    for previous, current in zip(values, values[1:], strict=False):
        if current == previous:
            continue  # the original raises ZeroDivisionError here
        # Same operation order as the original: (per_frame * |diff|) / diff, i.e. ±per_frame.
        step = per_frame * abs(current - previous) / (current - previous)
        sequence.extend(np.arange(previous, current, step).tolist())
    if len(sequence) > num_frames:
        sequence = sequence[:num_frames]
    sequence.extend([sequence[-1]] * (num_frames - len(sequence)))
    return np.asarray(sequence, dtype=np.float64).astype(np.float32)


def pose_override(
    num_frames: int,
    *,
    yaw: Sequence[float] | None = None,
    pitch: Sequence[float] | None = None,
    roll: Sequence[float] | None = None,
) -> PoseOverride | None:
    """The renderer's per-frame angle overrides for a clip of ``num_frames`` frames; None when no list is given."""
    if yaw is None and pitch is None and roll is None:
        return None

    def axis(values: Sequence[float] | None) -> torch.Tensor | None:
        return None if values is None else torch.from_numpy(camera_angles(values, num_frames))

    return PoseOverride(yaw=axis(yaw), pitch=axis(pitch), roll=axis(roll))
