"""Reference videos (``ref_eyeblink`` / ``ref_pose``) -> per-frame 3DMM coefficients (N, 73).

The original runs its whole source-image preprocessing on the video (``CropAndExtract.generate`` with
``source_image_flag=False``); what it does, and what we do the same way:

* frames are read in order and used one per output frame, whatever the video's frame rate (the original reads
  ``CAP_PROP_FPS`` and ignores it; a 50 fps reference therefore plays at half speed).  We log a warning;
* the crop is placed ONCE, from the landmarks of the first frame, and the same box is cut out of every frame
  (``Preprocesser.crop``: "first frame for all video"), in the generation's preprocess mode (crop/full: the quad
  box, extcrop/extfull: the border box, resize: the whole frame);
* every crop is resized to 256 x 256 whatever the render size (the original does not pass ``pic_size`` for
  reference videos, so its default 256 applies); landmarks are detected again on each crop and the crop is
  aligned and regressed by the 3DMM network exactly like the source image;
* a frame whose crop shows no face reuses the previous frame's landmarks (``KeypointExtractor.extract_keypoint``).

Errors (``ReferenceVideoError``, with the request field name): missing/unreadable file or no video stream, no
frames, frames larger than the pixel cap, no face in the first frame (the original crashes there) or in the first
frame's crop (the original falls back to a mean-face landmark template; we ask for a video that starts on a
visible face instead).

Frames are decoded by the bundled ffmpeg one at a time (``imageio_ffmpeg.read_frames``) and only their 73
coefficients are kept, so memory does not grow with the video; ``max_frames`` stops decoding early (the motion
stage never uses more reference frames than the audio has).  The models are the caller's (already loaded).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sadtalker.errors import NoFaceError, ReferenceVideoError
from sadtalker.face.align import align_for_recon
from sadtalker.face.crop import Preprocess, check_landmarks, check_preprocess, crop_face, landmarks_in_crop
from sadtalker.face.detect import FaceLandmarker
from sadtalker.face.recon import ReconNet, source_coefficients
from sadtalker.media import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)

# The original preprocesses reference videos at its default pic_size, not at the render size.
REFERENCE_CROP_SIZE = 256
VIDEO_FPS = 25.0


@dataclass(frozen=True)
class ReferenceVideo:
    """3DMM coefficients of the first ``num_frames`` frames of a reference video."""

    path: Path
    coeff_73: np.ndarray  # (N, 73) float32 [exp 64, angle 3, trans 3, s, tx, ty] per frame
    fps: float  # the file's frame rate (frames are used one per output frame regardless)
    frames_without_face: int  # frames whose crop showed no face (previous landmarks reused)

    @property
    def num_frames(self) -> int:
        return int(self.coeff_73.shape[0])


@dataclass(frozen=True)
class _VideoStream:
    fps: float
    size_wh: tuple[int, int]
    seconds: float | None
    frames: Iterator[np.ndarray]


def _open_video(path: Path, field: str, max_pixels: int) -> tuple[_VideoStream, Callable[[], None]]:
    """Start decoding ``path`` to RGB frames; returns the stream and a function that stops ffmpeg."""
    import imageio_ffmpeg

    if not path.is_file():
        raise ReferenceVideoError(f"{field}: {path.name}: file not found", field=field)
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        reader.close()
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReferenceVideoError(
            f"{field}: {path.name} is not a readable video ({first_line}); use an mp4/mov/webm/mkv/avi file "
            "with a video stream",
            field=field,
        ) from None
    width, height = (int(v) for v in meta["size"])
    if width * height > max_pixels:
        reader.close()
        raise ReferenceVideoError(
            f"{field}: {path.name} has {width}x{height} frames, more than {max_pixels:,} pixels; downscale it "
            "(e.g. ffmpeg -i in.mp4 -vf scale=1280:-2 out.mp4)",
            field=field,
        )

    def frames() -> Iterator[np.ndarray]:
        for raw in reader:
            yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)

    fps = float(meta.get("fps") or 0.0)
    duration = meta.get("duration")
    seconds = float(duration) if isinstance(duration, int | float) else None
    return _VideoStream(fps, (width, height), seconds, frames()), reader.close


@dataclass(frozen=True)
class VideoInfo:
    """What the header of a reference video says (no frame is decoded)."""

    fps: float
    size_wh: tuple[int, int]
    seconds: float


def check_reference_video(
    path: str | Path,
    *,
    field: str = "ref_video",
    max_seconds: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> VideoInfo:
    """Request-time validation of a reference video from its header: readable, a video stream, frame size and
    duration within the caps.  Raises ``ReferenceVideoError`` naming ``field``.  (Faces are only looked for at
    render time, where the detector runs.)"""
    path = Path(path)
    stream, stop = _open_video(path, field, max_pixels)
    stop()
    seconds = float(stream.seconds or 0.0)
    if max_seconds is not None and seconds > max_seconds:
        raise ReferenceVideoError(
            f"{field}: {path.name} lasts {seconds:.1f} s, more than the limit of {max_seconds:g} s; trim it "
            "(only as many frames as the audio has are used)",
            field=field,
        )
    return VideoInfo(stream.fps, stream.size_wh, seconds)


def reference_coefficients(
    path: str | Path,
    *,
    preprocess: Preprocess,
    recon_net: ReconNet,
    landmarker: FaceLandmarker | None = None,
    landmarks: np.ndarray | None = None,
    max_frames: int | None = None,
    field: str = "ref_video",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ReferenceVideo:
    """Per-frame (N, 73) coefficients of the video at ``path``, as the original computes them.

    ``landmarks`` (N, 68, 2): injected landmarks per frame in the video's pixels (tests, conformance cases),
    used instead of detection (the first frame's place the crop, each frame's are mapped into its crop);
    otherwise ``landmarker`` detects them.  ``max_frames`` stops after that many frames.  ``field`` names the
    request field in error messages.
    """
    path = Path(path)
    preprocess = check_preprocess(preprocess)
    if landmarks is None and landmarker is None:
        raise ValueError("reference video landmarks were not given and no landmarker was passed to detect them")
    injected = None
    if landmarks is not None:
        injected = np.asarray(landmarks, dtype=np.float32)
        if injected.ndim != 3 or injected.shape[1:] != (68, 2) or injected.shape[0] < 1:
            raise ValueError(f"reference landmarks must be (N, 68, 2), got {injected.shape}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")

    stream, stop = _open_video(path, field, max_pixels)
    if stream.fps and abs(stream.fps - VIDEO_FPS) > 0.01:
        logger.warning(
            "%s: %s is %.3g fps; like the original, its frames are used one per 25 fps output frame (motion "
            "%.2gx faster); re-encode it at 25 fps (ffmpeg -i in.mp4 -r 25 out.mp4) to keep its timing",
            field,
            path.name,
            stream.fps,
            stream.fps / VIDEO_FPS,
        )
    rows: list[np.ndarray] = []
    missing = 0
    first_landmarks: np.ndarray | None = None
    previous: np.ndarray | None = None
    try:
        for index, frame in enumerate(stream.frames):
            if max_frames is not None and index >= max_frames:
                break
            if index == 0 and preprocess != "resize":
                first_landmarks = _first_frame_landmarks(frame, injected, landmarker, path, field)
            crop = crop_face(frame, first_landmarks, preprocess=preprocess, size=REFERENCE_CROP_SIZE)
            if injected is not None:
                if index >= injected.shape[0]:
                    raise ValueError(f"{path.name}: {injected.shape[0]} landmark sets given for more frames")
                lm_crop = landmarks_in_crop(crop, check_landmarks(injected[index], "reference landmarks"))
            else:
                assert landmarker is not None
                try:
                    lm_crop = landmarker.detect(crop.crop_image, image_name=f"frame {index} of {path.name}").landmarks
                except NoFaceError:
                    if previous is None:
                        raise ReferenceVideoError(
                            f"{field}: no face found in the face crop of the first frame of {path.name}; use a "
                            "video that starts on a clearly visible face",
                            field=field,
                        ) from None
                    lm_crop, missing = previous, missing + 1  # the original's fallback: last landmarks
            previous = lm_crop
            aligned = align_for_recon(crop.crop_image, lm_crop)
            rows.append(source_coefficients(recon_net.coefficients(aligned.image_224), aligned.trans_params))
    finally:
        stop()
    if not rows:
        raise ReferenceVideoError(
            f"{field}: {path.name} has no video frames; use a video of at least one frame", field=field
        )
    if missing:
        logger.warning(
            "%s: no face in %d of %d frames of %s; used the previous frame's landmarks",
            field,
            missing,
            len(rows),
            path.name,
        )
    return ReferenceVideo(path, np.concatenate(rows, axis=0), stream.fps, missing)


def _first_frame_landmarks(
    frame: np.ndarray, injected: np.ndarray | None, landmarker: FaceLandmarker | None, path: Path, field: str
) -> np.ndarray:
    """Landmarks of the first frame in its own pixels: they place the crop for the whole video."""
    if injected is not None:
        return check_landmarks(injected[0], "reference landmarks")
    assert landmarker is not None
    try:
        # Like the source image's first call, the original feeds the RGB frame where BGR is expected.
        return landmarker.detect(frame, image_name=f"the first frame of {path.name}", rgb_as_bgr=True).landmarks
    except NoFaceError:
        raise ReferenceVideoError(
            f"{field}: no face found in the first frame of {path.name}; the crop is placed from the first frame, "
            "so trim the video to start on a clearly visible face",
            field=field,
        ) from None
