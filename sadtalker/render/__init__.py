"""Render stage: source portrait + 3DMM coefficient windows -> video frames (SadTalker face renderer)."""

from sadtalker.render.renderer import (
    DrivingState,
    PoseOverride,
    Renderer,
    SourceState,
    frames_to_uint8,
    load_mapping_state,
)
from sadtalker.render.windows import RenderSemantics, build_semantics, frame_windows

__all__ = [
    "DrivingState",
    "PoseOverride",
    "RenderSemantics",
    "Renderer",
    "SourceState",
    "build_semantics",
    "frame_windows",
    "frames_to_uint8",
    "load_mapping_state",
]
