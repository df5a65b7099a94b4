"""Test helpers shared by several test modules (plain functions; fixtures live in conftest.py).

Import as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile
import torch

from sadtalker.checkpoints.files import FACE_DETECTION_FILE as DETECTOR_FILE
from sadtalker.contracts import SAMPLES_PER_FRAME

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SADTALKER_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
TOOLS = SHARED / "tools"

CROP_CASE = "crop_people0_256"
FULL_CASE = "fullstill_full3_256"
GOLDEN_CASES = (CROP_CASE, FULL_CASE)
CASE_IMAGES = {CROP_CASE: "people_0.png", FULL_CASE: "full3.png"}


# ------------------------------------------------------------------------------------------ reference kit


def on_ci() -> bool:
    """CI sets ``CI=true`` (GitHub, GitLab and most runners do): there a missing reference kit is an error."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_kit_message() -> str:
    return f"reference kit not found at {SHARED} (set SADTALKER_SHARED, or run where ../shared exists, as CI does)"


def load_golden(case_dir: Path) -> dict[str, np.ndarray]:
    with np.load(case_dir / "golden.npz") as data:
        return {key: data[key] for key in data.files}


def case_inputs(reference_dir: Path, name: str) -> tuple[Path, np.ndarray, Path]:
    """(image, injected 68 landmarks on the image, wav) of a public golden case."""
    case_dir = reference_dir / "golden" / name
    with np.load(case_dir / "inputs.npz") as inputs:
        landmarks = inputs["lm68_orig"]
    wav = next(case_dir.glob("*.wav"))
    return case_dir / CASE_IMAGES[name], landmarks, wav


def short_wav(source: Path, out: Path, frames: int) -> Path:
    """The first ``frames`` video frames' worth of a 16 kHz wav (+ half a frame, which is dropped)."""
    samples, rate = soundfile.read(source, dtype="int16")
    soundfile.write(out, samples[: frames * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2], rate)
    return out


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def is_output_name(name: str) -> bool:
    """``<YYYYmmdd-HHMMSS>_<8 lowercase hex>.mp4`` with a real date, checked without the code's own regex."""
    stem, dot, ext = name.partition(".")
    stamp, underscore, token = stem.rpartition("_")
    if (dot, ext, underscore) != (".", "mp4", "_") or len(token) != 8 or set(token) - set("0123456789abcdef"):
        return False
    try:
        return datetime.strptime(stamp, "%Y%m%d-%H%M%S").strftime("%Y%m%d-%H%M%S") == stamp
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- video


def ffmpeg() -> str:
    from sadtalker.media import ffmpeg_exe

    return ffmpeg_exe()


def decode_frames(path: Path, width: int, height: int) -> np.ndarray:
    """Every video frame of ``path`` as (T, H, W, 3) uint8 RGB (ffmpeg's own yuv420p -> RGB conversion)."""
    raw = subprocess.run(
        [ffmpeg(), "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    frame_bytes = width * height * 3
    assert len(raw) % frame_bytes == 0, f"{len(raw)} bytes is not a whole number of {width}x{height} frames"
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def as_yuv420p(frames: np.ndarray) -> np.ndarray:
    """``frames`` (H, W, 3) or (T, H, W, 3) as yuv420p can hold them (ffmpeg's RGB->YUV->RGB, no codec)."""
    batch = frames if frames.ndim == 4 else frames[None]
    height, width = batch.shape[1:3]
    convert = [ffmpeg(), "-v", "error", "-f", "rawvideo", "-s", f"{width}x{height}"]
    yuv = subprocess.run(
        [*convert, "-pix_fmt", "rgb24", "-i", "-", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
        input=np.ascontiguousarray(batch).tobytes(), capture_output=True, check=True,
    ).stdout  # fmt: skip
    rgb = subprocess.run(
        [*convert, "-pix_fmt", "yuv420p", "-i", "-", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        input=yuv, capture_output=True, check=True,
    ).stdout  # fmt: skip
    out = np.frombuffer(rgb, np.uint8).reshape(batch.shape)
    return out if frames.ndim == 4 else out[0]


def even_crop(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: the encoder drops an odd last row / column (rows/cols are axes -3, -2)."""
    height, width = frames.shape[-3:-1]
    return frames[..., : height // 2 * 2, : width // 2 * 2, :]


def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


# Why 30 dB: the reference kit allows our rendered frames <= 2 levels off the golden ones (99.9 % within 1 level),
# i.e. PSNR >= ~48 dB before encoding.  H.264 (crf 18) then costs a few dB on these noise-like frames, and
# yuv420p halves the chroma resolution: on the random-weight frames that alone caps RGB PSNR at ~28 dB, whoever
# encodes them.  So luma is compared with the golden frame, and RGB with the golden frame as yuv420p holds it.
# Measured: 34-40 dB without GFPGAN, 43-49 dB with it (the tests print per-frame values).  Broken videos score
# far lower against the golden frames: black 6 dB, frozen or reordered 16-21 dB, shifted by 2 px 23 dB
# (test_pipeline.test_video_comparison_rejects_broken_videos feeds such videos through this comparison).
MIN_PSNR_DB = 30.0


Region = tuple[slice, slice]  # (rows, columns) of a frame


def frame_psnrs(decoded: np.ndarray, expected: np.ndarray, region: Region | None = None) -> list[tuple[float, float]]:
    """Per frame (luma PSNR, RGB PSNR against ``expected`` as yuv420p holds it), over ``region`` if given.

    The region is cut after the yuv420p conversion of the whole frame, so the chroma grid is the encoder's.
    """
    if decoded.shape != expected.shape:
        raise AssertionError(f"decoded video {decoded.shape} != expected frames {expected.shape}")
    held = as_yuv420p(expected)
    rows, cols = region if region is not None else (slice(None), slice(None))
    decoded, expected, held = decoded[:, rows, cols], expected[:, rows, cols], held[:, rows, cols]
    return [(psnr(luma(d), luma(e)), psnr(d, h)) for d, e, h in zip(decoded, expected, held, strict=True)]


def assert_video_matches(
    decoded: np.ndarray, expected: np.ndarray, min_psnr: float = MIN_PSNR_DB, region: Region | None = None
) -> None:
    """Every decoded frame is its expected frame (same count, size, order) within ``min_psnr`` dB.

    ``region``: compare only there (e.g. the pasted face of a full-photo video, whose static background would
    otherwise lift the PSNR of a wrong face above the floor).
    """
    scores = frame_psnrs(decoded, expected, region)
    where = ""
    if region is not None:
        rows, cols = region
        where = f" in rows {rows.start}:{rows.stop}, cols {cols.start}:{cols.stop}"
    print(f"per-frame PSNR (luma, rgb){where}:", ", ".join(f"({y:.1f}, {c:.1f})" for y, c in scores))
    bad = [(i, y, c) for i, (y, c) in enumerate(scores) if min(y, c) < min_psnr]
    assert not bad, f"frames below {min_psnr} dB{where} (index, luma, rgb): {bad}"


# ------------------------------------------------------------------------------------- face detection


def write_blind_checkpoints(checkpoints: Path, out: Path) -> Path:
    """A checkpoint directory like ``checkpoints`` whose RetinaFace always answers "background".

    With random weights RetinaFace finds faces everywhere; zeroing its classification head's weights and biasing
    every anchor to (background 20, face -20) makes it find none, so the real no-face path runs.
    """
    out.mkdir(parents=True, exist_ok=True)
    for source in checkpoints.iterdir():
        if source.name != DETECTOR_FILE:
            (out / source.name).symlink_to(source.resolve())
    state = torch.load(checkpoints / DETECTOR_FILE, map_location="cpu", weights_only=True)
    for key in [k for k in state if k.startswith("ClassHead.")]:
        if key.endswith(".weight"):
            state[key] = torch.zeros_like(state[key])
        else:  # per anchor (background, face) logits
            state[key] = torch.tensor([20.0, -20.0]).repeat(state[key].numel() // 2)
    torch.save(state, out / DETECTOR_FILE)
    return out
