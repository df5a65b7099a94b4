"""Face stage: source portrait -> face crop, 68 landmarks, 3DMM coefficients (the original's preprocessing)."""

from sadtalker.face.align import LM3D_STD_5PTS, AlignedFace, align_for_recon
from sadtalker.face.crop import PREPROCESS_MODES, FaceCrop, Preprocess, QuadGeometry, crop_face, quad_geometry
from sadtalker.face.detect import FaceLandmarker, FaceLandmarks
from sadtalker.face.recon import ReconNet, source_coefficients
from sadtalker.face.source import SourceFace, prepare_source

__all__ = [
    "LM3D_STD_5PTS",
    "PREPROCESS_MODES",
    "AlignedFace",
    "FaceCrop",
    "FaceLandmarker",
    "FaceLandmarks",
    "Preprocess",
    "QuadGeometry",
    "ReconNet",
    "SourceFace",
    "align_for_recon",
    "crop_face",
    "prepare_source",
    "quad_geometry",
    "source_coefficients",
]
