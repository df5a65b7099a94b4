"""Photo check: does a portrait hold one clear, big-enough face? Answered at upload time, before any render.

Runs facexlib's RetinaFace (the detector the render pipeline uses, same 0.97 score threshold) on the CPU in the
request thread, NOT through the render worker: a render holds the worker for minutes, while the page wants the
verdict the moment a photo is picked; and the GPU stays the worker's alone. The image is shrunk to at most
`DETECT_MAX_SIDE` pixels first, which keeps a 1024x1024 portrait under the 2 s budget on a 2-core CPU
(bench/photo_check.py prints the time); a face too small to find at that scale is too small to animate well
anyway. The render itself still detects at full resolution, so the two can disagree on borderline tiny faces.
Calls are serialised (facexlib's RetinaFace keeps per-call state on the module); the detector (a second, CPU copy
of RetinaFace, ~110 MB) is loaded on first use.

`judge` (the verdict) is a pure function of the detections, so it is tested with injected detections.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The detector sees the photo shrunk to this longest side (RetinaFace finds faces down to ~16 px at that scale, so
#: a usable 80-px face of a 1024-px photo is still ~37 px). ~2.1 CPU-seconds for a 1024x1024 portrait, i.e. ~1 s on
#: an idle 2-core CPU; 640 px costs ~3.4 CPU-seconds (bench/photo_check.py, with the detector's cost per pixel).
DETECT_MAX_SIDE = 480
#: A face's shorter box side must be at least this many photo pixels: SadTalker crops the face region and
#: resizes it to 256 px; much smaller faces come out blurred.
MIN_FACE_PIXELS = 80
#: sadtalker.face.detect.SCORE_THRESHOLD (the original's threshold), repeated so judging needs no torch import;
#: tests/test_photo_check.py checks the two agree.
SCORE_THRESHOLD = 0.97

#: BGR uint8 (H, W, 3) -> detections (N, >=5): x1, y1, x2, y2, score, ... (RetinaFace.detect_faces' layout)
Detect = Callable[[np.ndarray], np.ndarray]


class PhotoCheckUnavailable(RuntimeError):
    """The detector weights are missing or unreadable (HTTP 503); the message says which file."""


class PhotoUnreadable(ValueError):
    """The upload is not a decodable image (HTTP 400 naming source_image)."""


@dataclass(frozen=True)
class FaceBox:
    x1: float
    y1: float
    x2: float
    y2: float
    score: float

    @property
    def short_side(self) -> float:
        return min(self.x2 - self.x1, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return max(self.x2 - self.x1, 0.0) * max(self.y2 - self.y1, 0.0)


@dataclass(frozen=True)
class PhotoVerdict:
    usable: bool
    reason: str  # one sentence for a person: why (not) usable, and what to do
    faces: tuple[FaceBox, ...]  # largest first, in photo pixels
    width: int
    height: int
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["faces"] = [asdict(face) for face in self.faces]
        body["face_count"] = len(self.faces)
        return body


def judge(
    detections: np.ndarray, width: int, height: int, *, scale: float = 1.0, min_face_pixels: int = MIN_FACE_PIXELS
) -> PhotoVerdict:
    """Verdict from raw detections (found on the photo shrunk by `scale`): usable = exactly one face, big enough."""
    faces = []
    rows = np.asarray(detections, dtype=np.float64)
    rows = rows.reshape(-1, rows.shape[-1]) if rows.size else np.zeros((0, 5))
    for row in rows:
        if row.size < 5 or not np.all(np.isfinite(row[:5])) or row[4] < SCORE_THRESHOLD:
            continue
        x1, y1 = max(row[0] / scale, 0.0), max(row[1] / scale, 0.0)
        x2, y2 = min(row[2] / scale, float(width)), min(row[3] / scale, float(height))
        if x2 > x1 and y2 > y1:
            faces.append(FaceBox(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1), round(float(row[4]), 4)))
    faces.sort(key=lambda face: face.area, reverse=True)
    if not faces:
        return PhotoVerdict(False, "no face found; use a clear, frontal photo of one person", (), width, height)
    largest = faces[0]
    if len(faces) > 1:
        reason = f"{len(faces)} faces found; only the largest would be animated: crop the photo to one person"
        return PhotoVerdict(False, reason, tuple(faces), width, height)
    if largest.short_side < min_face_pixels:
        reason = (
            f"the face is only {largest.short_side:.0f} px across; at least {min_face_pixels} px is needed "
            "(use a closer or larger photo)"
        )
        return PhotoVerdict(False, reason, tuple(faces), width, height)
    return PhotoVerdict(True, "one clear face found", tuple(faces), width, height)


def shrink_for_detection(image_bgr: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> tuple[np.ndarray, float]:
    """The image the detector sees and its scale relative to the photo (<= 1)."""
    import cv2

    height, width = image_bgr.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return image_bgr, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA), scale


def read_image_bgr(path: Path) -> np.ndarray:
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise PhotoUnreadable("source_image: cannot be decoded as an image (PNG, JPEG, WebP, BMP ...)")
    return image


class PhotoChecker:
    """Loads RetinaFace from `checkpoint_dir` on first use (CPU) unless a `detect` function is injected."""

    def __init__(self, checkpoint_dir: Path, *, detect: Detect | None = None, max_side: int = DETECT_MAX_SIDE):
        self._checkpoint_dir = Path(checkpoint_dir)
        self._detect = detect
        self._max_side = max_side
        self._lock = threading.Lock()

    def _detector(self) -> Detect:
        if self._detect is None:
            from sadtalker.checkpoints.files import checkpoint_paths
            from sadtalker.face.detect import load_detector
            from sadtalker.weights import CheckpointError

            path = checkpoint_paths(self._checkpoint_dir).face_detection
            if not path.is_file():
                raise PhotoCheckUnavailable(f"photo check unavailable: {path} not found (set SADTALKER_CHECKPOINTS)")
            import torch

            try:
                network = load_detector(path, torch.device("cpu"))
            except CheckpointError as exc:
                raise PhotoCheckUnavailable(f"photo check unavailable: {exc}") from None

            def detect(image_bgr: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return np.asarray(network.detect_faces(image_bgr, SCORE_THRESHOLD))

            self._detect = detect
        return self._detect

    def check_array(self, image_bgr: np.ndarray) -> PhotoVerdict:
        import time

        started = time.perf_counter()
        height, width = image_bgr.shape[:2]
        small, scale = shrink_for_detection(image_bgr, self._max_side)
        with self._lock:
            detections = self._detector()(np.ascontiguousarray(small))
        verdict = judge(detections, width, height, scale=scale)
        return PhotoVerdict(**{**verdict.__dict__, "seconds": round(time.perf_counter() - started, 3)})

    def check(self, path: Path) -> PhotoVerdict:
        return self.check_array(read_image_bgr(path))
