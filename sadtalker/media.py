"""Decoding the user's inputs: the portrait image and the driving audio.

Faithfulness notes (the original reads its inputs with ``cv2.imread`` and ``librosa.load(path, sr=16000)``):

* Images are decoded with OpenCV (``cv2.imdecode``, which applies the EXIF orientation exactly like
  ``cv2.imread``), so the pixels equal the original's for every file OpenCV can read. Pillow only reads the
  header first (format and size, to refuse decompression bombs before any pixel is decoded) and decodes the
  few files OpenCV cannot. Alpha is DROPPED, not composited: that is what ``cv2.imread(IMREAD_COLOR)`` does,
  so a transparent PNG gives the same face crop as in the original.
* Audio in WAV/FLAC/OGG/AIFF is decoded exactly as the original's ``librosa.load(path, sr=16000)`` does
  (soundfile float32 read, channel mean, soxr_hq resampling), so a 16 kHz PCM16 wav is bit-identical.
  Everything else (mp3, m4a, webm, ...) is decoded by the ffmpeg binary bundled with imageio-ffmpeg to
  float32 at its native rate on a pipe (as WAV, so the channel count travels with the data), averaged to mono
  like librosa, then resampled with librosa's default resampler (``soxr_hq``), as on the soundfile path.
"""

from __future__ import annotations

import io
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sadtalker.contracts import SAMPLE_RATE, SAMPLES_PER_FRAME
from sadtalker.errors import AudioError, AudioTooLongError, AudioTooShortError, ImageError

# 25 Mpx admits 6000x4000 phone photos; the decoded RGB image is then 75 MB.
DEFAULT_MAX_PIXELS = 25_000_000
# Pillow format names we accept ("MPO" is how Pillow names multi-picture JPEGs written by many phones).
IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})
# libsndfile container formats read without ffmpeg. MP3 is left to ffmpeg on purpose: it handles
# encoder delay/padding (gapless info) and VBR headers, libsndfile's mpg123 path does not always.
SOUNDFILE_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "AIFF"})
FFMPEG_TIMEOUT_S = 120.0

# EXIF orientations 5..8 swap width and height (transpose / rotate by 90 degrees).
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


# ----------------------------------------------------------------------------------------------------- images


def probe_image(path: str | Path) -> tuple[int, int]:
    """Displayed ``(width, height)`` of an image (EXIF orientation applied) from its header only.

    Raises ImageError if the file is missing, not an image, or of an unsupported format.
    """
    header = _read_image_header(Path(path), _read_bytes(Path(path), ImageError))
    return header.width, header.height


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to RGB uint8 ``(H, W, 3)``, pixel-identical to ``cv2.imread`` + BGR->RGB.

    JPEG/PNG/WebP/BMP; EXIF orientation applied; grey and palette images expanded to RGB; alpha dropped.
    Raises ImageError for a missing, unreadable, unsupported or too large (> ``max_pixels``) file. The size
    is checked on the header before any pixel is decoded.
    """
    path = Path(path)
    data = _read_bytes(path, ImageError)
    header = _read_image_header(path, data)
    if header.width * header.height > max_pixels:
        raise ImageError(
            f"{path.name}: image is {header.width}x{header.height} = {header.width * header.height:,} pixels, "
            f"more than the limit of {max_pixels:,}; please downscale it"
        )
    rgb = _decode_with_cv2(data)
    if rgb is None:
        rgb = _decode_with_pillow(path, data)
    if sorted(rgb.shape[:2]) != sorted((header.height, header.width)):
        # A decoder disagreeing with the header would defeat the size check above. (Transposed is fine: decoders
        # differ on which formats' EXIF orientation they honour; OpenCV 5 does JPEG, PNG and WebP.)
        raise ImageError(f"{path.name}: decoded size {rgb.shape[1]}x{rgb.shape[0]} does not match its header")
    return rgb


@dataclass(frozen=True)
class _ImageHeader:
    format: str
    width: int  # as displayed, i.e. after the EXIF orientation
    height: int


def _read_bytes(path: Path, error: type[ImageError] | type[AudioError]) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path.name}: file not found") from None
    except OSError as exc:
        raise error(f"{path.name}: cannot read file ({exc.strerror or exc})") from exc


def _read_image_header(path: Path, data: bytes) -> _ImageHeader:
    """Format and displayed size from the header; Pillow decodes no pixel data here."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or "?"
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if fmt in {"JPEG", "MPO", "PNG", "WEBP"} else 1
    except UnidentifiedImageError:
        raise ImageError(f"{path.name}: not a readable image (supported: JPEG, PNG, WebP, BMP)") from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses absurd headers itself (> 2x its own limit) before we get to compare sizes.
        raise ImageError(f"{path.name}: image is too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path.name}: corrupt image header ({exc})") from None
    if fmt not in IMAGE_FORMATS:
        raise ImageError(f"{path.name}: unsupported image format {fmt} (supported: JPEG, PNG, WebP, BMP)")
    if width <= 0 or height <= 0:
        raise ImageError(f"{path.name}: image has no pixels")
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return _ImageHeader(fmt, width, height)


def _decode_with_cv2(data: bytes) -> np.ndarray | None:
    """OpenCV decode exactly like the original's ``cv2.imread`` (IMREAD_COLOR applies EXIF orientation)."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        return None
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _decode_with_pillow(path: Path, data: bytes) -> np.ndarray:
    """Fallback for files OpenCV cannot decode; same conventions (orientation applied, alpha dropped)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            # convert("RGB") drops alpha without compositing, like OpenCV, and expands grey/palette images.
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path.name}: corrupt or truncated image ({exc})") from None
    return np.ascontiguousarray(rgb, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------------ audio


def probe_audio_duration(path: str | Path) -> float:
    """Duration in seconds, cheaply: the soundfile header, else ffmpeg's container header.

    Falls back to a (capped) decode only when the container does not state a duration.
    Raises AudioError if the file is missing or not audio.
    """
    path = Path(path)
    _check_file(path)
    info = _soundfile_info(path)
    if info is not None:
        return info.frames / info.samplerate
    stream = _ffmpeg_probe(path)
    if stream.duration is not None:
        return stream.duration
    return len(_ffmpeg_decode(path, stream, max_seconds=None)) / stream.sample_rate


def load_audio(path: str | Path, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode an audio file to float32 mono 16 kHz, as ``librosa.load(path, sr=16000)`` does.

    Raises AudioError (unreadable/unsupported), AudioTooShortError (< 640 samples, i.e. less than one
    25 fps video frame) or AudioTooLongError (> ``max_seconds``; checked on the header before decoding
    when the header states a duration, and on the decoded length in any case).
    """
    path = Path(path)
    _check_file(path)
    info = _soundfile_info(path)
    if info is not None:
        _check_duration(path, info.frames / info.samplerate, max_seconds)
        wav = _soundfile_decode(path)
    else:
        stream = _ffmpeg_probe(path)
        if stream.duration is not None:
            _check_duration(path, stream.duration, max_seconds)
        native = _ffmpeg_decode(path, stream, max_seconds=max_seconds)
        wav = _resample(native, stream.sample_rate)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{path.name}: audio contains NaN or infinite samples")
    _check_duration(path, len(wav) / SAMPLE_RATE, max_seconds)
    if len(wav) < SAMPLES_PER_FRAME:
        raise AudioTooShortError(
            f"{path.name}: audio is {len(wav) / SAMPLE_RATE * 1000:.0f} ms long; at least "
            f"{SAMPLES_PER_FRAME / SAMPLE_RATE * 1000:.0f} ms (one video frame) is needed"
        )
    return wav


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise AudioError(f"{path.name}: file not found")


def _check_duration(path: Path, seconds: float, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLongError(f"{path.name}: audio is {seconds:.1f} s long, the limit is {max_seconds:g} s")


def _soundfile_info(path: Path):  # -> soundfile._SoundFileInfo | None
    """soundfile's header info if libsndfile reads this file in one of SOUNDFILE_FORMATS, else None."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    if info.format not in SOUNDFILE_FORMATS or info.samplerate <= 0:
        return None
    return info


def _soundfile_decode(path: Path) -> np.ndarray:
    """What ``librosa.load(path, sr=16000)`` does with a soundfile-readable file, step by step.

    soundfile float32 read, ``librosa.to_mono`` (channel mean), soxr_hq resampling (a no-op at 16 kHz).
    Spelled out rather than calling ``librosa.load`` because that imports audioread (deprecated stdlib
    modules) just to test whether it was handed an audioread object.
    """
    import librosa
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as handle:
            rate = handle.samplerate
            wav = handle.read(dtype="float32", always_2d=False).T  # (channels, n) like librosa
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path.name}: corrupt audio data ({exc})") from None
    return _resample(librosa.to_mono(wav), rate)


def _resample(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    # librosa.load's default res_type (librosa returns the input unchanged when the rates are equal).
    return librosa.resample(wav, orig_sr=sample_rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")


@dataclass(frozen=True)
class _AudioStream:
    sample_rate: int
    duration: float | None  # container duration; None when the header does not state one


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_AUDIO_STREAM_RE = re.compile(r"Stream #\d+:\d+\S*: Audio: [^\n]*?(\d+) Hz")


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_probe(path: Path) -> _AudioStream:
    """Parse ``ffmpeg -i`` (header only; ffmpeg exits 1 for want of an output, which is expected)."""
    try:
        proc = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
            capture_output=True,
            timeout=FFMPEG_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AudioError(f"{path.name}: timed out reading the audio header") from None
    text = proc.stderr.decode("utf-8", "replace")
    stream = _AUDIO_STREAM_RE.search(text)
    if "Input #0" not in text or stream is None:
        reason = "no audio stream" if "Input #0" in text else _tail(text, 1) or "unknown format"
        raise AudioError(f"{path.name}: not a readable audio file ({reason})")
    duration = _DURATION_RE.search(text)
    seconds = None
    if duration is not None:
        hours, minutes, secs = duration.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    return _AudioStream(sample_rate=int(stream.group(1)), duration=seconds)


def _ffmpeg_decode(path: Path, stream: _AudioStream, *, max_seconds: float | None) -> np.ndarray:
    """First audio stream -> float32 mono at the stream's native rate, on a pipe (no temp file).

    ffmpeg emits float32 WAV with ALL channels and we average them ourselves, like librosa's ``to_mono``
    (ffmpeg's own ``-ac 1`` downmix mixes each channel at -3 dB, i.e. +3 dB louder than the mean, and can clip).
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn"]
    if max_seconds is not None:
        # Decode a little past the cap only: enough to tell "too long", bounded work for a huge file.
        cmd += ["-t", f"{max_seconds + 1.0:.3f}"]
    cmd += ["-ar", str(stream.sample_rate), "-acodec", "pcm_f32le", "-map_metadata", "-1", "-f", "wav", "pipe:1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise AudioError(f"{path.name}: timed out decoding the audio") from None
    if proc.returncode != 0:
        raise AudioError(f"{path.name}: cannot decode audio ({_tail(proc.stderr.decode('utf-8', 'replace'), 3)})")
    channels, data = _split_piped_wav(proc.stdout)
    if channels is None or data is None:
        raise AudioError(f"{path.name}: cannot decode audio (ffmpeg produced no WAV data)")
    usable = len(data) // (4 * channels) * (4 * channels)
    samples = np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels)
    return samples.T.mean(axis=0) if channels > 1 else samples[:, 0].copy()


def _split_piped_wav(wav: bytes) -> tuple[int | None, bytes | None]:
    """(channel count, sample bytes) of a WAV written to a pipe, whose size fields ffmpeg cannot fill in."""
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        return None, None
    channels = None
    pos = 12
    while pos + 8 <= len(wav):
        chunk, size = wav[pos : pos + 4], int.from_bytes(wav[pos + 4 : pos + 8], "little")
        if chunk == b"fmt ":
            channels = int.from_bytes(wav[pos + 10 : pos + 12], "little")
        elif chunk == b"data":
            return channels, wav[pos + 8 :]  # the size field may be a placeholder: take everything
        pos += 8 + size + (size & 1)
    return channels, None


def _tail(text: str, lines: int) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])
