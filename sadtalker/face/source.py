"""Source portrait -> S x S face crop + 3DMM source coefficients (the original's ``CropAndExtract.generate``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sadtalker.face.align import AlignedFace, align_for_recon
from sadtalker.face.crop import (
    FaceCrop,
    Preprocess,
    check_image,
    check_landmarks,
    check_preprocess,
    crop_face,
    landmarks_in_crop,
)
from sadtalker.face.detect import FaceLandmarker
from sadtalker.face.recon import ReconNet, source_coefficients


@dataclass(frozen=True)
class SourceFace:
    """Everything later stages need from the source image, plus the intermediates a conformance run records."""

    crop: FaceCrop
    landmarks_orig: np.ndarray | None  # (68, 2) float32 on the original image; None in resize mode
    landmarks_crop: np.ndarray  # (68, 2) float32 on the S x S crop (y down)
    aligned: AlignedFace
    coeff_257: np.ndarray  # (1, 257) float32 3DMM coefficients of the crop
    source_coeff: np.ndarray  # (1, 73) float32 [exp 64, angle 3, trans 3, s, tx, ty]
    num_faces: int | None  # faces the detector saw on the original image (None if landmarks were given)

    @property
    def crop_image(self) -> np.ndarray:
        return self.crop.crop_image

    @property
    def trans_params(self) -> np.ndarray:
        return self.aligned.trans_params


def _need_landmarker(landmarker: FaceLandmarker | None, what: str) -> FaceLandmarker:
    if landmarker is None:
        raise ValueError(f"{what} were not given and no landmarker was passed to detect them")
    return landmarker


def prepare_source(
    image_rgb: np.ndarray,
    *,
    preprocess: Preprocess,
    size: int,
    recon_net: ReconNet,
    landmarker: FaceLandmarker | None = None,
    landmarks: np.ndarray | None = None,
    crop_landmarks: np.ndarray | None = None,
    image_name: str = "the source image",
) -> SourceFace:
    """Crop the face out of ``image_rgb`` ((H, W, 3) uint8 RGB) and regress its 3DMM coefficients.

    Like the original, landmarks are found twice: on the original image (to place the crop; skipped in 'resize'
    mode) and again on the S x S crop (for the 3DMM alignment).  Either call can be replaced by injected
    landmarks: ``landmarks`` in original-image pixels (the crop landmarks are then mapped from them unless
    ``crop_landmarks`` are given), ``crop_landmarks`` in crop pixels (both (68, 2), y down).
    Raises ``NoFaceError`` when the detector finds no face.
    """
    image = check_image(image_rgb)
    preprocess = check_preprocess(preprocess)

    landmarks_orig: np.ndarray | None = None
    num_faces: int | None = None
    if preprocess != "resize":
        if landmarks is None:
            found = _need_landmarker(landmarker, "source landmarks").detect(
                image, image_name=image_name, rgb_as_bgr=True
            )
            landmarks_orig, num_faces = found.landmarks, found.num_faces
        else:
            landmarks_orig = check_landmarks(landmarks, "landmarks")
    crop = crop_face(image, landmarks_orig, preprocess=preprocess, size=size)

    if crop_landmarks is None and landmarks_orig is not None and landmarks is not None:
        # Given landmarks (a face the detector may miss): map them instead of detecting again on the crop.
        lm_crop = landmarks_in_crop(crop, landmarks_orig)
    elif crop_landmarks is None:
        found_crop = _need_landmarker(landmarker, "crop landmarks").detect(
            crop.crop_image, image_name=f"the face crop of {image_name}"
        )
        lm_crop = found_crop.landmarks
        if num_faces is None:
            num_faces = found_crop.num_faces
    else:
        lm_crop = check_landmarks(crop_landmarks, "crop_landmarks")

    aligned = align_for_recon(crop.crop_image, lm_crop)
    coeff_257 = recon_net.coefficients(aligned.image_224)
    return SourceFace(
        crop=crop,
        landmarks_orig=landmarks_orig,
        landmarks_crop=lm_crop,
        aligned=aligned,
        coeff_257=coeff_257,
        source_coeff=source_coefficients(coeff_257, aligned.trans_params),
        num_faces=num_faces,
    )
