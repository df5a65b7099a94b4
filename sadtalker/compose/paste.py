"""Putting rendered crops back: the aspect resize of every frame and the full-mode paste into the photo.

Mirrors the original's ``animate.py`` (aspect resize) and ``src/utils/paste_pic.py`` (``cv2.seamlessClone``),
but on frames in memory: the original round-trips the frames through an H.264 file and an mp4v file before
pasting, which only adds compression loss.

One effect of that round trip is kept on purpose: the intermediate yuv420p video holds even-sized frames, so
an aspect-resized frame of odd height (e.g. 256x255) reaches the paste with its last row dropped. The golden
``paste_full_frame0`` is reproduced (<= 1 level) only with that row dropped (up to 110 levels off without it:
the resize to the paste box then scales the content differently), so ``paste_frame`` drops it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from sadtalker.errors import RenderError
from sadtalker.video import crop_to_even


def aspect_size(size: int, crop_size_wh: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` of a rendered ``size``x``size`` frame after the aspect resize.

    The width stays ``size``; the height follows the crop's aspect ratio, truncated like the original's
    ``int(size * oh / ow)``.
    """
    crop_w, crop_h = (int(v) for v in crop_size_wh)
    if crop_w <= 0 or crop_h <= 0:
        raise ValueError(f"crop size must be positive, got {crop_size_wh}")
    return size, int(size * crop_h / crop_w)


def aspect_resize(frames: np.ndarray, crop_size_wh: tuple[int, int]) -> np.ndarray:
    """Resize rendered square frames to the crop's aspect ratio (cv2 bilinear, as in the original).

    ``frames``: ``(S, S, 3)`` or ``(T, S, S, 3)`` uint8; returns ``(S', S, 3)`` / ``(T, S', S, 3)`` with
    ``S' = int(S * crop_h / crop_w)``. ``crop_size_wh`` is the cropper's ``crop_info[0]``.
    """
    batch = frames if frames.ndim == 4 else frames[None]
    width, height = aspect_size(batch.shape[2], crop_size_wh)
    resized = np.stack([cv2.resize(frame, (width, height)) for frame in batch])
    return resized if frames.ndim == 4 else resized[0]


@dataclass(frozen=True)
class PasteBox:
    """Where a rendered crop goes in the original image: pixel box ``[x1, x2) x [y1, y2)``.

    May extend past the image when the face is near its border; ``paste_frame`` handles that.
    """

    x1: int
    y1: int
    x2: int
    y2: int

    def __post_init__(self) -> None:
        if self.x2 - self.x1 < 3 or self.y2 - self.y1 < 3:
            raise ValueError(f"paste box {self} is smaller than 3x3 pixels")

    @classmethod
    def from_crop(
        cls,
        crop_box_xyxy: Iterable[int],
        quad_lx_ly_rx_ry: Iterable[float],
        *,
        extended_crop: bool = False,
    ) -> PasteBox:
        """The original's geometry from the cropper's ``crop_info[1]`` (border crop) and ``crop_info[2]`` (quad).

        The quad is relative to the border crop and truncated with ``int()`` (towards zero, as upstream).
        ``extended_crop`` (preprocess 'extfull') pastes over the whole border crop instead.
        """
        clx, cly, crx, cry = (int(v) for v in crop_box_xyxy)
        if extended_crop:
            return cls(clx, cly, crx, cry)
        lx, ly, rx, ry = (int(v) for v in quad_lx_ly_rx_ry)
        return cls(clx + lx, cly + ly, clx + rx, cly + ry)

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    @property
    def center(self) -> tuple[int, int]:
        """The clone centre the original passes to ``cv2.seamlessClone``."""
        return (self.x1 + self.x2) // 2, (self.y1 + self.y2) // 2


def paste_frame(frame: np.ndarray, image: np.ndarray, box: PasteBox) -> np.ndarray:
    """Seamlessly clone one rendered frame into the full image, exactly like the original's full mode.

    ``frame``: rendered crop (uint8 RGB, normally the aspect-resized frame), cropped to even size like the
    original's intermediate video, then resized bilinearly to the box; ``image``: the original photo, uint8
    RGB ``(H, W, 3)``. Returns a new ``(H, W, 3)`` uint8 image.

    ``cv2.seamlessClone`` treats the three channels independently, so working in RGB gives the same bytes as
    the original's BGR. With a full white mask OpenCV replaces the box minus its 1-pixel rim and requires that
    inner region to lie inside the image. When it does not (a face at the photo's border), the original
    crashes; we clip the box to the image instead, so the face stays where it belongs.
    """
    _check_image(frame, "frame")
    _check_image(image, "image")
    patch = cv2.resize(np.ascontiguousarray(crop_to_even(frame)), (box.width, box.height))
    patch, clipped = _clip_to_image(patch, box, image.shape[1], image.shape[0])
    mask = np.full(patch.shape, 255, dtype=np.uint8)
    return cv2.seamlessClone(patch, image, mask, clipped.center, cv2.NORMAL_CLONE)


def paste_frames(frames: Iterable[np.ndarray], image: np.ndarray, box: PasteBox) -> Iterator[np.ndarray]:
    """``paste_frame`` over a batch or stream of frames, lazily (full-size frames are big: don't hold them all)."""
    for frame in frames:
        yield paste_frame(frame, image, box)


def _clip_to_image(patch: np.ndarray, box: PasteBox, width: int, height: int) -> tuple[np.ndarray, PasteBox]:
    """Cut the parts of ``patch`` that seamlessClone cannot place (beyond the 1-pixel rim it ignores)."""
    x1, y1 = max(box.x1, -1), max(box.y1, -1)
    x2, y2 = min(box.x2, width + 1), min(box.y2, height + 1)
    if (x1, y1, x2, y2) == (box.x1, box.y1, box.x2, box.y2):
        return patch, box
    if x2 - x1 < 3 or y2 - y1 < 3:
        raise RenderError(f"paste box {box} lies outside the {width}x{height} image")
    cut = patch[y1 - box.y1 : y2 - box.y1, x1 - box.x1 : x2 - box.x1]
    return np.ascontiguousarray(cut), PasteBox(x1, y1, x2, y2)


def _check_image(array: np.ndarray, name: str) -> None:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name} must be uint8 (H, W, 3), got {array.dtype} {array.shape}")
