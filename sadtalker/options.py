"""What a caller may ask of one generation: the original SadTalker flags as a typed, validated object."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Preset = Literal["crop", "full"]
Preprocess = Literal["crop", "full", "resize"]
Enhancer = Literal["gfpgan", "none"]
RenderSize = Literal[256, 512]
Precision = Literal["exact", "fast"]

NUM_POSE_STYLES = 46


@dataclass(frozen=True)
class GenerateOptions:
    """The knobs SadTalker users know (same names and defaults as the original ``inference.py`` flags).

    ``seed`` drives every random draw of a generation (eye blinks, pose noise, GFPGAN noise); ``None`` draws a
    fresh seed.  ``max_frames`` renders only the first N frames (a quick preview; motion is still computed from the
    whole audio, so they equal the first N frames of the full video); ``None`` renders all.
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
    precision: Precision | None = None

    def __post_init__(self) -> None:
        if self.preprocess not in ("crop", "full", "resize"):
            raise ValueError(f"preprocess must be 'crop', 'full' or 'resize', got {self.preprocess!r}")
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
        return 73 if self.preprocess == "full" else 70

    @classmethod
    def preset(cls, name: Preset, **overrides: object) -> GenerateOptions:
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
        return replace(base, **overrides)  # type: ignore[arg-type]
