"""What a caller may ask of one generation: the original SadTalker flags as a typed, validated object."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from sadtalker.contracts import PREPROCESS_MODES, Preprocess, coeff_count

Preset = Literal["crop", "full"]
Enhancer = Literal["gfpgan", "none"]
RenderSize = Literal[256, 512]
Precision = Literal["exact", "fast"]

NUM_POSE_STYLES = 46
# Free-view angles beyond a half turn are meaningless for a face; the original does not limit them.
MAX_VIEW_DEGREES = 180.0
MAX_VIEW_ANGLES = 256  # entries per input_yaw/pitch/roll list


def _angle_list(name: str, values: object) -> tuple[float, ...] | None:
    """``None`` or a non-empty tuple of finite angles in degrees (a list or a single number is accepted)."""
    if values is None:
        return None
    if isinstance(values, int | float) and not isinstance(values, bool):
        values = (values,)
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a list of angles in degrees, got {values!r}")
    angles = tuple(values)
    if not 1 <= len(angles) <= MAX_VIEW_ANGLES:
        raise ValueError(f"{name} must hold 1 to {MAX_VIEW_ANGLES} angles, got {len(angles)}")
    for angle in angles:
        if isinstance(angle, bool) or not isinstance(angle, int | float) or not math.isfinite(angle):
            raise ValueError(f"{name} must hold numbers (degrees), got {angle!r}")
        if abs(angle) > MAX_VIEW_DEGREES:
            raise ValueError(f"{name} angles must lie in [-{MAX_VIEW_DEGREES:g}, {MAX_VIEW_DEGREES:g}], got {angle}")
    return angles


def _video_path(name: str, value: object) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError(f"{name} must be the path of a video file, got {value!r}")
    return Path(value)


@dataclass(frozen=True)
class GenerateOptions:
    """The knobs SadTalker users know (same names and defaults as the original ``inference.py`` flags).

    ``seed`` drives every random draw of a generation (eye blinks, pose noise, GFPGAN noise); ``None`` draws a
    fresh seed.  ``max_frames`` renders only the first N frames (a quick preview; motion is still computed from the
    whole audio, so they equal the first N frames of the full video); ``None`` renders all.

    Motion controls (all off by default; the original's flags of the same names):

    - ``ref_eyeblink``: video whose per-frame expression replaces the source's as audio2exp's reference (eye
      blinks and more come from it; the drawn blinks are switched off);
    - ``ref_pose``: video whose head pose, relative to its first frame, is added to the predicted pose (no
      effect with ``still``, as in the original);
    - ``input_yaw`` / ``input_pitch`` / ``input_roll``: head angles in degrees that replace the predicted ones;
      one value holds for the whole clip, several are interpolated across it;
    - ``preprocess`` ``extcrop`` / ``extfull``: the larger border crop around the face (``extfull`` pastes it
      back into the photo).

    ``batch_size``: frames rendered at once; ``None`` = the device's best (1 on CPU, up to 16 on CUDA by free
    memory; the frames are the same either way).  ``precision``: "exact" (float32) or "fast" (reduced
    precision, measured fidelity); ``None`` = the pipeline's default (``SadTalker(precision=...)``).
    """

    preprocess: Preprocess = "crop"
    still: bool = False
    enhancer: Enhancer = "gfpgan"
    size: RenderSize = 256
    pose_style: int = 0
    expression_scale: float = 1.0
    batch_size: int | None = None
    seed: int | None = None
    max_frames: int | None = None
    ref_eyeblink: Path | None = None
    ref_pose: Path | None = None
    input_yaw: tuple[float, ...] | None = None
    input_pitch: tuple[float, ...] | None = None
    input_roll: tuple[float, ...] | None = None
    precision: Precision | None = None

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {self.preprocess!r}")
        # Normalised here (frozen dataclass: object.__setattr__) so callers may pass str paths and lists.
        for name in ("ref_eyeblink", "ref_pose"):
            object.__setattr__(self, name, _video_path(name, getattr(self, name)))
        for name in ("input_yaw", "input_pitch", "input_roll"):
            object.__setattr__(self, name, _angle_list(name, getattr(self, name)))
        if self.enhancer not in ("gfpgan", "none"):
            raise ValueError(f"enhancer must be 'gfpgan' or 'none', got {self.enhancer!r}")
        if self.size not in (256, 512):
            raise ValueError(f"size must be 256 or 512, got {self.size!r}")
        if not 0 <= self.pose_style < NUM_POSE_STYLES:
            raise ValueError(f"pose_style must be in [0, {NUM_POSE_STYLES - 1}], got {self.pose_style}")
        if not 0.0 <= self.expression_scale <= 10.0:
            raise ValueError(f"expression_scale must be in [0, 10], got {self.expression_scale}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.precision is not None and self.precision not in ("exact", "fast"):
            raise ValueError(f"precision must be 'exact' or 'fast', got {self.precision!r}")
        if self.batch_size is not None and not 1 <= self.batch_size <= 64:
            raise ValueError(f"batch_size must be in [1, 64], got {self.batch_size}")

    @property
    def coeff_nc(self) -> int:
        """Coefficients per frame the mapping net takes: 73 (crop parameters appended) for full, else 70."""
        return coeff_count(self.preprocess)

    @property
    def pastes_back(self) -> bool:
        """'full' and 'extfull': the animated crop is pasted back into the photo (the original's ``'full' in``)."""
        return "full" in self.preprocess

    @property
    def free_view(self) -> bool:
        """Any of input_yaw / input_pitch / input_roll given."""
        return any(v is not None for v in (self.input_yaw, self.input_pitch, self.input_roll))

    @classmethod
    def preset(cls, name: Preset, **overrides: Any) -> GenerateOptions:
        """The service's two presets, as the original's command lines.

        - ``crop``: ``--preprocess crop --enhancer gfpgan`` (cropped face, head moves)
        - ``full``: ``--still --preprocess full --enhancer gfpgan`` (still head, face pasted into the whole image)
        """
        if name == "crop":
            base = cls(preprocess="crop", still=False, enhancer="gfpgan")
        elif name == "full":
            base = cls(preprocess="full", still=True, enhancer="gfpgan")
        else:
            raise ValueError(f"preset must be 'crop' or 'full', got {name!r}")
        return replace(base, **overrides)
