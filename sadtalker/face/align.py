"""Alignment of the S x S crop for the 3DMM regression network (Deep3DFaceRecon's ``align_img``).

Five points from the 68 landmarks are fitted (least squares, scaled orthographic) to the standard 3D face; the
image is then scaled so the face has a fixed size and a 224 x 224 window is cut around it.  The fitted
``trans_params`` [w0, h0, s, tx, ty] become the last three source coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from sadtalker.face.crop import check_landmarks

TARGET_SIZE = 224
RESCALE_FACTOR = 102.0

# 5 standard 3D landmarks (eye image-left, eye image-right, nose tip, mouth corner left, mouth corner right) from
# the BFM's similarity_Lm3D_all.mat, float32 as the original loads them.
LM3D_STD_5PTS = np.array(
    [  # exact float32 values (printed as float64): rounding them shifts tx/ty by ~1e-7
        [-0.3114865720272064, 0.29036077857017517, 0.13377952575683594],
        [0.30979886651039124, 0.289720356464386, 0.1317952573299408],
        [0.003253498813137412, -0.04617932438850403, 0.5524424314498901],
        [-0.25216928124427795, -0.3813391625881195, 0.22405731678009033],
        [0.24846619367599487, -0.38128235936164856, 0.22235769033432007],
    ],
    dtype=np.float32,
)
LM3D_STD_5PTS.setflags(write=False)


@dataclass(frozen=True)
class AlignedFace:
    """Input of the 3DMM network and how it was obtained."""

    landmarks_in: np.ndarray  # (68, 2) float32: crop landmarks with y flipped (y up), as align_img receives them
    trans_params: np.ndarray  # (5,) float64 [w0, h0, s, tx, ty]
    image_224: np.ndarray  # (224, 224, 3) uint8 RGB
    landmarks_224: np.ndarray  # (68, 2) float64 landmarks in the 224 image (y up)


def flip_y(landmarks: np.ndarray, height: int) -> np.ndarray:
    """Image y-down -> y-up (``y -> H - 1 - y``), the convention Deep3DFaceRecon's alignment expects."""
    flipped = check_landmarks(landmarks).copy()
    flipped[:, 1] = height - 1 - flipped[:, 1]
    return flipped


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """(5, 2): eye centres (mean of the two corners), nose tip, mouth corners; dtype of the input."""
    lm = np.asarray(landmarks68)
    return np.stack(
        [
            lm[[36, 39]].mean(axis=0),
            lm[[42, 45]].mean(axis=0),
            lm[30],
            lm[48],
            lm[54],
        ]
    )


def fit_scale_translation(points_2d: np.ndarray, points_3d: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares affine camera ``p = [R1; R2] X + t``; returns t (2,) and the mean row norm of R (the scale).

    Same linear system as the original's ``POS``: per point one row for x (unknowns R1, tx) and one for y
    (unknowns R2, ty), solved in float64.
    """
    count = points_2d.shape[0]
    system = np.zeros((2 * count, 8), dtype=np.float64)
    system[0::2, 0:3] = points_3d
    system[0::2, 3] = 1.0
    system[1::2, 4:7] = points_3d
    system[1::2, 7] = 1.0
    rhs = np.asarray(points_2d, dtype=np.float64).reshape(2 * count, 1)  # x0, y0, x1, y1, ...
    solution = np.linalg.lstsq(system, rhs, rcond=None)[0][:, 0]
    scale = (np.linalg.norm(solution[0:3]) + np.linalg.norm(solution[4:7])) / 2
    return np.array([solution[3], solution[7]]), float(scale)


def _resize_and_crop(
    image: Image.Image, landmarks: np.ndarray, t: np.ndarray, s: float, target_size: int
) -> tuple[Image.Image, np.ndarray]:
    """Scale the image by ``s`` (PIL bicubic) and cut the target window centred on the fitted face centre."""
    w0, h0 = image.size
    # int() truncation toward zero everywhere, as the original's astype(np.int32).
    w, h = int(w0 * s), int(h0 * s)
    left = int(w / 2 - target_size / 2 + (t[0] - w0 / 2) * s)
    up = int(h / 2 - target_size / 2 + (h0 / 2 - t[1]) * s)
    resized = image.resize((w, h), resample=Image.Resampling.BICUBIC)
    # PIL fills the part of the window outside the image with black.
    window = resized.crop((left, up, left + target_size, up + target_size))

    shifted = np.stack([landmarks[:, 0] - t[0] + w0 / 2, landmarks[:, 1] - t[1] + h0 / 2], axis=1) * s
    shifted = shifted - np.array([[w / 2 - target_size / 2, h / 2 - target_size / 2]])
    return window, shifted


def align_for_recon(
    crop_image: np.ndarray,
    crop_landmarks: np.ndarray,
    *,
    target_size: int = TARGET_SIZE,
    rescale_factor: float = RESCALE_FACTOR,
    lm3d_std: np.ndarray = LM3D_STD_5PTS,
) -> AlignedFace:
    """Align the S x S crop (RGB uint8) given its 68 landmarks in image convention (y down)."""
    image = Image.fromarray(np.ascontiguousarray(crop_image))
    w0, h0 = image.size
    lm_in = flip_y(crop_landmarks, h0)
    t, s = fit_scale_translation(five_points(lm_in), lm3d_std)
    s = rescale_factor / s
    window, lm_224 = _resize_and_crop(image, lm_in, t, s, target_size)
    return AlignedFace(
        landmarks_in=lm_in,
        trans_params=np.array([w0, h0, s, t[0], t[1]], dtype=np.float64),
        image_224=np.array(window.convert("RGB")),
        landmarks_224=lm_224,
    )
