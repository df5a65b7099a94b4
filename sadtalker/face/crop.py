"""Where the face is cut out of the source image, and the S x S crop the rest of the pipeline animates.

Faithful to the original preprocessing (``src/utils/croper.py`` ``align_face``/``crop`` and
``src/utils/preprocess.py``): an FFHQ-style oriented quad is derived from eyes and mouth, a border box around it
is cut out of the image, then the axis-aligned bounds of the quad inside that box.  ``full`` mode produces the
same crop as ``crop`` mode and additionally needs the box in the original image to paste the animated face back.
``extcrop`` / ``extfull`` stop after the border box (the original's ``Preprocesser.crop(still=True)``): more of
the head and shoulders.  ``resize`` mode uses the whole image.

Numerics follow what the original computes under numpy 1.26 (float32 landmarks, a few float64 promotions that
numpy 2 would no longer do); the crop box and quad are compared bit-for-bit against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np

from sadtalker.contracts import PREPROCESS_MODES, Preprocess, check_landmarks
from sadtalker.errors import ImageError

EXTENDED_MODES = frozenset({"extcrop", "extfull"})


# The original aligns for an FFHQ output size of 512; it only matters for the downscale of very large faces.
ALIGN_OUTPUT_SIZE = 512


@dataclass(frozen=True)
class QuadGeometry:
    """Output of the original ``align_face``: all coordinates are in the (possibly downscaled) image."""

    align_rsize_wh: tuple[int, int]  # image size the crop box refers to (smaller than the image for huge faces)
    crop_box_xyxy: tuple[int, int, int, int]  # border box (clx, cly, crx, cry)
    quad_lx_ly_rx_ry: tuple[float, float, float, float]  # quad bounds inside the border box (before int())

    @property
    def quad_int(self) -> tuple[int, int, int, int]:
        """The quad bounds as the original slices them (``int()`` truncation)."""
        lx, ly, rx, ry = self.quad_lx_ly_rx_ry
        return int(lx), int(ly), int(rx), int(ry)

    @property
    def paste_box_xyxy(self) -> tuple[int, int, int, int]:
        """(ox1, oy1, ox2, oy2): where the crop sits in the image, as the original computes it for paste-back."""
        clx, cly, _, _ = self.crop_box_xyxy
        lx, ly, rx, ry = self.quad_int
        return clx + lx, cly + ly, clx + rx, cly + ry


@dataclass(frozen=True)
class FaceCrop:
    """The S x S source crop and the geometry needed to reproduce / undo it."""

    preprocess: str
    size: int  # S
    crop_image: np.ndarray  # (S, S, 3) uint8 RGB: cv2 bilinear resize of the cropped region
    image_size_wh: tuple[int, int]  # original image (W, H)
    geometry: QuadGeometry | None  # None in resize mode
    cropped_hw_before_resize: tuple[int, int]  # shape of the cropped region before the S x S resize
    # (ox1, oy1, ox2, oy2) of the crop in the original image; the whole image in resize mode.  Paste-back resizes
    # the animated frame to (ox2 - ox1, oy2 - oy1) and centres it at ((ox1 + ox2) // 2, (oy1 + oy2) // 2).
    # For huge faces (align_rsize_wh != image size) these are, as in the original, coordinates of the
    # downscaled image although paste-back uses them on the original one.
    paste_box_xyxy: tuple[int, int, int, int]

    @property
    def align_rsize_wh(self) -> tuple[int, int] | None:
        return None if self.geometry is None else self.geometry.align_rsize_wh

    @property
    def crop_box_xyxy(self) -> tuple[int, int, int, int] | None:
        return None if self.geometry is None else self.geometry.crop_box_xyxy

    @property
    def quad_lx_ly_rx_ry(self) -> tuple[float, float, float, float] | None:
        return None if self.geometry is None else self.geometry.quad_lx_ly_rx_ry

    @property
    def crop_info_size_wh(self) -> tuple[int, int]:
        """``crop_info[0]`` of the original: (ox2 - ox1, oy2 - oy1), used for the output aspect ratio.

        Original quirk kept: in the ext modes this is still the size of the QUAD box although the crop is the
        larger border box, so rendered frames get the quad's aspect ratio (and extfull stretches them back over
        the border box when pasting).
        """
        ox1, oy1, ox2, oy2 = self.paste_box_xyxy if self.geometry is None else self.geometry.paste_box_xyxy
        return ox2 - ox1, oy2 - oy1

    @property
    def region_box_xyxy(self) -> tuple[int, int, int, int]:
        """The box the crop was cut from, in the (possibly downscaled) image: the quad box, or in the ext modes
        the border box; the whole image in resize mode."""
        if self.geometry is None:
            return self.paste_box_xyxy
        if self.preprocess in EXTENDED_MODES:
            return self.geometry.crop_box_xyxy
        return self.geometry.paste_box_xyxy


def check_preprocess(preprocess: str) -> Preprocess:
    """Validate a preprocess mode name."""
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}; got {preprocess!r}")
    return cast(Preprocess, preprocess)


def check_image(image_rgb: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image."""
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"source image must be an (H, W, 3) uint8 RGB array; got {image.dtype} {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ImageError(f"source image is too small ({image.shape[1]}x{image.shape[0]} px)")
    return image


def _oriented_quad(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """FFHQ-style square around eyes and mouth: (4, 2) float64 corners and its side length."""
    eye_left = lm[36:42].mean(axis=0)  # float32, like the original
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    # Quad x axis: eye direction plus the mouth direction rotated by 90 degrees.  The original multiplies by an
    # integer list here, which promotes to float64 from this point on.
    x = eye_to_eye.astype(np.float64) - np.flipud(eye_to_mouth).astype(np.float64) * np.array([-1.0, 1.0])
    x /= np.hypot(*x)
    # np.hypot of float32 scalars is float32; numpy 1.26 then multiplied in float64 (numpy 2 would stay float32).
    half_side = max(
        np.float64(np.hypot(*eye_to_eye)) * 2.0,
        np.float64(np.hypot(*eye_to_mouth)) * 1.8,
    )
    x *= half_side
    y = np.flipud(x) * np.array([-1.0, 1.0])
    centre = eye_avg + eye_to_mouth * np.float32(0.1)  # stays float32 in the original
    quad = np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])
    return quad, float(np.hypot(*x) * 2)


def quad_geometry(landmarks: np.ndarray, image_size_wh: tuple[int, int]) -> QuadGeometry:
    """The original ``align_face``: resize size, border crop box and quad bounds from 68 landmarks."""
    lm = check_landmarks(landmarks)
    width, height = image_size_wh
    quad, qsize = _oriented_quad(lm)

    # Faces whose quad is >= 4x the output size are handled on a downscaled image.
    shrink = int(np.floor(qsize / ALIGN_OUTPUT_SIZE * 0.5))
    if shrink > 1:
        width, height = int(np.rint(float(width) / shrink)), int(np.rint(float(height) / shrink))
        quad /= shrink
        qsize /= shrink
    rsize = (int(width), int(height))

    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        max(int(np.floor(quad[:, 0].min())) - border, 0),
        max(int(np.floor(quad[:, 1].min())) - border, 0),
        min(int(np.ceil(quad[:, 0].max())) + border, width),
        min(int(np.ceil(quad[:, 1].max())) + border, height),
    )
    if crop[2] - crop[0] < width or crop[3] - crop[1] < height:
        quad -= np.array(crop[:2], dtype=np.float64)

    corners = (quad + 0.5).flatten()  # x0 y0 x1 y1 x2 y2 x3 y3 for corners (c-x-y, c-x+y, c+x+y, c+x-y)
    lx = max(min(corners[0], corners[2]), 0)
    ly = max(min(corners[1], corners[7]), 0)
    rx = min(max(corners[4], corners[6]), width)
    # The original clamps the bottom edge by the image WIDTH; kept so crops match it exactly.
    ry = min(max(corners[3], corners[5]), width)
    return QuadGeometry(
        align_rsize_wh=rsize,
        crop_box_xyxy=crop,
        quad_lx_ly_rx_ry=(float(lx), float(ly), float(rx), float(ry)),
    )


def crop_face(
    image_rgb: np.ndarray,
    landmarks: np.ndarray | None,
    *,
    preprocess: Preprocess,
    size: int,
) -> FaceCrop:
    """Cut the face out of ``image_rgb`` as the original does and resize it to ``size`` x ``size``.

    ``landmarks`` (68 x 2, original-image pixels) are required except for 'resize', which ignores them.
    """
    image = check_image(image_rgb)
    preprocess = check_preprocess(preprocess)
    if size < 1:
        raise ValueError(f"size must be positive; got {size}")
    height, width = image.shape[:2]

    geometry: QuadGeometry | None = None
    if preprocess == "resize":
        region = image
        paste_box = (0, 0, width, height)
    else:
        if landmarks is None:
            raise ValueError(f"preprocess {preprocess!r} needs the 68 face landmarks of the source image")
        geometry = quad_geometry(landmarks, (width, height))
        work = image
        if geometry.align_rsize_wh != (width, height):
            work = cv2.resize(image, geometry.align_rsize_wh)  # cv2 bilinear, as the original
        clx, cly, crx, cry = geometry.crop_box_xyxy
        lx, ly, rx, ry = geometry.quad_int
        region = work[cly:cry, clx:crx]
        if preprocess in EXTENDED_MODES:
            # The original's crop(still=True): the border box itself; extfull pastes back over that box
            # (paste_pic's extended_crop).  The border box is clamped to the image, so it is never empty.
            paste_box = geometry.crop_box_xyxy
        else:
            # 'crop' and 'full' cut the quad bounds out of the border box.
            region = region[ly:ry, lx:rx]
            paste_box = geometry.paste_box_xyxy
        if region.shape[0] == 0 or region.shape[1] == 0:
            raise ImageError("the face crop is empty: the landmarks lie outside the image")

    crop_image = cv2.resize(np.ascontiguousarray(region), (size, size))  # INTER_LINEAR
    return FaceCrop(
        preprocess=preprocess,
        size=size,
        crop_image=crop_image,
        image_size_wh=(width, height),
        geometry=geometry,
        cropped_hw_before_resize=(int(region.shape[0]), int(region.shape[1])),
        paste_box_xyxy=paste_box,
    )


def landmarks_in_crop(crop: FaceCrop, landmarks: np.ndarray) -> np.ndarray:
    """Original-image landmarks (68, 2) expressed in the S x S crop.

    Stands in for the original's second landmark detection (on the crop) when the caller gave the landmarks:
    the reference kit's injected crop landmarks are exactly this mapping.
    """
    geometry = crop.geometry
    if geometry is None:  # resize: the crop is the whole image
        scale = np.array([crop.size / crop.image_size_wh[0], crop.size / crop.image_size_wh[1]])
        return (landmarks * scale).astype(np.float32)
    resize = np.array(geometry.align_rsize_wh, dtype=np.float64) / np.array(crop.image_size_wh, dtype=np.float64)
    ox1, oy1, ox2, oy2 = crop.region_box_xyxy
    scale = np.array([crop.size / (ox2 - ox1), crop.size / (oy2 - oy1)])
    return ((landmarks.astype(np.float64) * resize - (ox1, oy1)) * scale).astype(np.float32)
