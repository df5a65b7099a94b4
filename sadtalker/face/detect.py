"""68 face landmarks from an image: facexlib RetinaFace (ResNet-50) box + AWing FAN 98 points -> 68 points.

Same recipe as the original (``src/utils/croper.py`` ``get_landmark`` and ``src/face3d/extract_kp_videos_safe.py``):
detect faces with a 0.97 score threshold at the image's own resolution, cut the box out (``int()`` of its
corners), run the FAN on that cut, convert 98 -> 68 points and shift them back by the box corner.

The networks are facexlib's, built here and loaded strictly from files in a checkpoint directory: facexlib's own
``init_*_model`` helpers would download missing weights and resolve paths against the working directory.  The
FAN's heatmap decoding is re-done here (``decode_heatmaps``) because facexlib's crashes on some heatmaps.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from facexlib.alignment import landmark_98_to_68
from facexlib.alignment.awing_arch import FAN
from facexlib.detection.retinaface import RetinaFace

from sadtalker.checkpoints.files import CheckpointPaths, checkpoint_paths
from sadtalker.errors import NoFaceError
from sadtalker.weights import CheckpointError, load_strict, read_torch

logger = logging.getLogger(__name__)

SCORE_THRESHOLD = 0.97  # the original's detection threshold, for both landmark calls


@dataclass(frozen=True)
class FaceLandmarks:
    """Landmarks of the face that was used, and how many faces the detector saw."""

    landmarks: np.ndarray  # (68, 2) float32, pixels of the image that was searched (x right, y down)
    box_xyxy: tuple[float, float, float, float]  # detector box of that face
    score: float
    num_faces: int


def decode_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    """(B, N, H, W) landmark heatmaps -> (B, N, 2) float64 (x, y) in heatmap pixels.

    Same as facexlib's ``calculate_points`` (the original's decoder): arg-max, plus a quarter-pixel step toward
    the larger neighbour, plus 0.5.  Its quirks are kept because they change results: neighbours are read in
    the flattened map (the right neighbour of a row's last pixel is the next row's first), and if ANY point lies
    in the last row (first row, or the second row's first pixel), every point's lower (upper) neighbour is
    replaced by the map's last (first) pixel.  Only
    its crash is fixed: a maximum on the very last pixel indexed past the end (kept in range here).
    """
    batch, count, height, width = heatmaps.shape
    size = height * width
    flat = heatmaps.reshape(batch * count, size)
    index = flat.argmax(axis=1)
    rows = np.arange(batch * count)
    points = np.stack((index % width, index // width), axis=1).astype(np.float64)

    right = flat[rows, np.minimum(index + 1, size - 1)]
    left = flat[rows, index - 1]  # index 0 wraps to the last pixel, as in the original
    below = flat[rows, size - 1] if np.any(index + width >= size) else flat[rows, index + width]
    above = flat[rows, 0] if np.any(index - width <= 0) else flat[rows, index - width]
    step = np.sign(np.stack((right - left, below - above), axis=1)) * 0.25
    return (points + step + 0.5).reshape(batch, count, 2)


def fan_landmarks98(aligner: FAN, crop_rgb: np.ndarray) -> np.ndarray:
    """98 landmarks (float64, crop pixels) from the AWing FAN, as facexlib's ``FAN.get_landmarks`` computes them."""
    height, width = crop_rgb.shape[:2]
    resized = cv2.resize(crop_rgb, (256, 256))
    # The FAN was trained on BGR input in [0, 1].
    batch = torch.from_numpy(np.ascontiguousarray(resized[..., ::-1].transpose(2, 0, 1))).float()
    batch = (batch / 255.0).unsqueeze(0).to(next(aligner.parameters()).device)
    with torch.inference_mode():
        outputs, _ = aligner(batch)
    heatmaps = outputs[-1][:, :-1].cpu().numpy()  # the last channel is the boundary map
    points = decode_heatmaps(heatmaps).reshape(-1, 2)
    return points * (width / 64, height / 64)


def load_detector(path: Path, device: torch.device) -> RetinaFace:
    """facexlib RetinaFace ResNet-50 from its plain state dict (shared by the face stage and the enhancer)."""
    state = read_torch(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a plain state dict of tensors (RetinaFace ResNet-50 weights)")
    # Official file is a plain state dict saved from a DataParallel model: strip the 'module.' prefix.
    state = {key.removeprefix("module."): value for key, value in state.items()}
    with warnings.catch_warnings():
        # facexlib builds its trunk with torchvision's deprecated resnet50(pretrained=False): nothing is fetched.
        warnings.simplefilter("ignore", UserWarning)
        detector = RetinaFace(network_name="resnet50", half=False, device=device)
    load_strict(detector, state, path.name)
    return detector.to(device).eval()


def _load_aligner(path: Path, device: torch.device) -> FAN:
    checkpoint = read_torch(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: expected a dict with a 'state_dict' entry (AWing FAN checkpoint)")
    aligner = FAN(num_modules=4, num_landmarks=98, device=device)
    load_strict(aligner, checkpoint["state_dict"], f"{path.name}[state_dict]")
    return aligner.to(device).eval()


class FaceLandmarker:
    """Face detector + 68-point landmarker loaded from ``checkpoint_dir``; never downloads anything.

    Not thread-safe: facexlib's RetinaFace keeps per-call state on the module; serialise calls to ``detect``.
    """

    def __init__(self, checkpoints: str | Path | CheckpointPaths, device: str | torch.device = "cpu") -> None:
        paths = checkpoint_paths(checkpoints)
        self.device = torch.device(device)
        missing = [path.name for path in (paths.face_detection, paths.face_alignment) if not path.is_file()]
        if missing:
            raise CheckpointError(f"face landmark weights not found in {paths.directory}: missing {', '.join(missing)}")
        self.detector = load_detector(paths.face_detection, self.device)
        self.aligner = _load_aligner(paths.face_alignment, self.device)

    @classmethod
    def from_networks(cls, detector: RetinaFace, aligner: FAN) -> FaceLandmarker:
        """Wrap networks that are already loaded (e.g. shared with another component, or stubs in tests)."""
        landmarker = cls.__new__(cls)
        landmarker.device = torch.device(getattr(detector, "device", "cpu"))
        landmarker.detector = detector
        landmarker.aligner = aligner
        return landmarker

    def detect(
        self, image_rgb: np.ndarray, *, image_name: str = "the image", rgb_as_bgr: bool = False
    ) -> FaceLandmarks:
        """68 landmarks of the largest face in an (H, W, 3) uint8 RGB image.

        RetinaFace expects BGR.  ``rgb_as_bgr=True`` feeds the RGB pixels unchanged, which is what the original
        does on its first call (on the full source image); its second call (on the S x S crop) passes a PIL image
        that facexlib converts to BGR properly.  Raises ``NoFaceError`` when no face scores above 0.97.
        """
        image = np.ascontiguousarray(image_rgb)
        detector_input = image if rgb_as_bgr else np.ascontiguousarray(image[..., ::-1])
        with torch.inference_mode():
            detections = self.detector.detect_faces(detector_input, SCORE_THRESHOLD)
        boxes = self._usable_boxes(detections, image.shape[1], image.shape[0])
        if not boxes:
            raise NoFaceError(f"no face found in {image_name}; use a clear frontal photo or pass landmarks")
        # The original takes the best-scoring face; a portrait's subject is more reliably the largest one.
        best = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        if len(boxes) > 1:
            logger.info("%d faces found in %s; using the largest (box %s)", len(boxes), image_name, best[:4])
        x1, y1, x2, y2 = best[:4]
        landmarks = landmark_98_to_68(fan_landmarks98(self.aligner, image[y1:y2, x1:x2]))  # float32
        landmarks[:, 0] += x1
        landmarks[:, 1] += y1
        box = detections[best[4], :4]
        return FaceLandmarks(
            landmarks=landmarks,
            box_xyxy=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            score=float(detections[best[4], 4]),
            num_faces=len(boxes),
        )

    @staticmethod
    def _usable_boxes(detections: np.ndarray, width: int, height: int) -> list[tuple[int, int, int, int, int]]:
        """Integer boxes (x1, y1, x2, y2, row) cut the way the original slices them, dropping unusable ones.

        The original slices with ``int()`` of the raw corners; a negative corner would wrap around in numpy,
        so corners are clamped to the image first (identical whenever the box lies inside the image).  Boxes
        with non-finite corners or nothing inside the image are dropped (they only come from broken weights).
        """
        boxes = []
        for row, det in enumerate(np.asarray(detections, dtype=np.float64).reshape(-1, 15)):
            if not np.all(np.isfinite(det[:4])):
                continue
            x1, y1 = max(int(det[0]), 0), max(int(det[1]), 0)
            x2, y2 = min(int(det[2]), width), min(int(det[3]), height)
            if x2 > x1 and y2 > y1:
                boxes.append((x1, y1, x2, y2, row))
        return boxes
