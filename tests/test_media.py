"""Input decoding: images equal the original's cv2.imread, audio equals its librosa.load(sr=16000)."""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import cv2
import librosa
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from sadtalker.errors import AudioError, AudioTooLongError, AudioTooShortError, ImageError
from sadtalker.media import ffmpeg_exe, load_audio, load_image, probe_audio_duration, probe_image

# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A smooth RGB test picture with some detail (odd size on purpose), 61x47."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:47, 0:61]
    base = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _cv2_reference(path: Path) -> np.ndarray:
    """What the original does: cv2.imread then BGR -> RGB."""
    return cv2.imread(str(path))[:, :, ::-1]


def _sine(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.4 * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (1 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


def _ffmpeg_encode(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), *args, str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.5 s sine files: 16 kHz mono PCM16 wav, 44.1 kHz stereo wav, flac, ogg, mp3, m4a."""
    out = tmp_path_factory.mktemp("audio")
    sf.write(out / "mono16k.wav", _sine(1.5, 16000), 16000, subtype="PCM_16")
    sf.write(out / "stereo44k.wav", _sine(1.5, 44100, 2), 44100, subtype="PCM_16")
    sf.write(out / "s.flac", _sine(1.5, 22050, 2), 22050)
    sf.write(out / "s.ogg", _sine(1.5, 44100), 44100, format="OGG", subtype="VORBIS")
    _ffmpeg_encode(out / "stereo44k.wav", out / "s.mp3", "-c:a", "libmp3lame", "-b:a", "128k")
    _ffmpeg_encode(out / "stereo44k.wav", out / "s.m4a", "-c:a", "aac", "-b:a", "128k")
    return out


def _peak_hz(wav: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.argmax(spectrum) * rate / len(wav))


# -------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        (".png", []),
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        (".bmp", []),
    ],
)
def test_image_formats_equal_cv2_imread(tmp_path: Path, picture: np.ndarray, suffix: str, params: list) -> None:
    path = tmp_path / f"p{suffix}"
    assert cv2.imwrite(str(path), picture[:, :, ::-1], params)
    rgb = load_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == picture.shape
    np.testing.assert_array_equal(rgb, _cv2_reference(path))
    assert probe_image(path) == (61, 47)
    if suffix in {".png", ".bmp"}:
        np.testing.assert_array_equal(rgb, picture)  # lossless


def test_pillow_written_jpeg_equals_cv2(tmp_path: Path, picture: np.ndarray) -> None:
    """A 4:2:0 JPEG from another encoder: still cv2's pixels (our decoder IS cv2)."""
    path = tmp_path / "pil.jpg"
    Image.fromarray(picture).save(path, quality=85, subsampling=2, progressive=True)
    np.testing.assert_array_equal(load_image(path), _cv2_reference(path))


def test_golden_image_equals_cv2(golden_case_dir: Path) -> None:
    case_image = next(p for p in golden_case_dir.iterdir() if p.suffix == ".png")
    np.testing.assert_array_equal(load_image(case_image), _cv2_reference(case_image))


def test_grey_palette_and_rgba(tmp_path: Path, picture: np.ndarray) -> None:
    grey = picture[:, :, 1]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgb = load_image(tmp_path / "grey.png")
    assert rgb.shape == (47, 61, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], grey)

    palette = Image.fromarray(picture).quantize(colors=16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")))

    # Alpha is dropped (not composited), as cv2.imread(IMREAD_COLOR) does in the original.
    alpha = np.zeros(picture.shape[:2], np.uint8)
    alpha[10:30, 10:30] = 255
    Image.fromarray(np.dstack([picture, alpha]), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), picture)
    Image.fromarray(np.dstack([picture, alpha]), "RGBA").save(tmp_path / "rgba.webp", lossless=True, exact=True)
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.webp"), picture)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_rotated_images(tmp_path: Path, picture: np.ndarray, fmt: str) -> None:
    image = Image.fromarray(picture)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / f"rotated.{fmt.lower()}"
    image.save(path, format=fmt, exif=exif, quality=95)
    stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[:, :, ::-1]
    rgb = load_image(path)
    assert rgb.shape == (61, 47, 3)
    assert probe_image(path) == (47, 61)
    np.testing.assert_array_equal(rgb, np.rot90(stored, k=-1))
    np.testing.assert_array_equal(rgb, _cv2_reference(path))  # cv2.imread applies it too


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG structure whose IHDR claims width x height, with a few bytes of pixel data only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_too_large_images_are_refused_before_decoding(
    tmp_path: Path, picture: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a too-large image")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    cv2.imwrite(str(tmp_path / "p.png"), picture)
    with pytest.raises(ImageError, match="more than the limit"):
        load_image(tmp_path / "p.png", max_pixels=61 * 47 - 1)
    (tmp_path / "huge.png").write_bytes(_png_header_only(30000, 30000))  # 900 Mpx, no data
    with pytest.raises(ImageError, match="limit"):
        load_image(tmp_path / "huge.png")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(100000, 100000))  # Pillow's own bomb guard
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "bomb.png")


def test_bad_image_files(tmp_path: Path, picture: np.ndarray) -> None:
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(1).integers(0, 256, 500, np.uint8).tobytes())
    (tmp_path / "text.jpg").write_text("not an image")
    Image.fromarray(picture).save(tmp_path / "anim.gif")
    Image.fromarray(picture).save(tmp_path / "p.tiff")
    cv2.imwrite(str(tmp_path / "full.png"), picture)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    for name, match in [
        ("noise.png", "not a readable image"),
        ("text.jpg", "not a readable image"),
        ("anim.gif", "unsupported image format GIF"),
        ("p.tiff", "unsupported image format TIFF"),
        ("truncated.png", "corrupt"),
        ("missing.png", "not found"),
    ]:
        with pytest.raises(ImageError, match=match) as info:
            load_image(tmp_path / name)
        assert info.value.field == "source_image"
    with pytest.raises(ImageError):
        probe_image(tmp_path / "text.jpg")


# --------------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("name", ["mono16k.wav", "stereo44k.wav", "s.flac", "s.ogg"])
def test_soundfile_formats_equal_librosa_load(audio_dir: Path, name: str) -> None:
    wav = load_audio(audio_dir / name)
    expected, _ = librosa.load(audio_dir / name, sr=16000)
    assert wav.dtype == np.float32 and wav.ndim == 1
    np.testing.assert_array_equal(wav, expected)
    assert abs(len(wav) - 24000) <= 1
    assert abs(_peak_hz(wav) - 440) < 2
    assert probe_audio_duration(audio_dir / name) == pytest.approx(1.5, abs=1e-3)


def test_golden_wav_equals_librosa_and_golden(golden_case_dir: Path) -> None:
    from helpers import load_golden

    case_wav = next(p for p in golden_case_dir.iterdir() if p.suffix == ".wav")
    wav = load_audio(case_wav)
    np.testing.assert_array_equal(wav, librosa.load(case_wav, sr=16000)[0])
    golden = load_golden(golden_case_dir)["wav_16k"]  # the original's wav after cropping to T*640 samples
    np.testing.assert_array_equal(wav[: len(golden)], golden)


@pytest.mark.parametrize("name", ["s.mp3", "s.m4a"])
def test_ffmpeg_formats(audio_dir: Path, name: str) -> None:
    wav = load_audio(audio_dir / name)
    assert wav.dtype == np.float32 and wav.ndim == 1
    # Lossy codecs: same length within 50 ms (encoder priming), same tone, same loudness.
    assert abs(len(wav) - 24000) <= 800
    assert abs(_peak_hz(wav) - 440) < 2
    reference = librosa.load(audio_dir / "stereo44k.wav", sr=16000)[0]
    assert np.sqrt(np.mean(wav**2)) == pytest.approx(np.sqrt(np.mean(reference**2)), rel=0.05)
    assert probe_audio_duration(audio_dir / name) == pytest.approx(1.5, abs=0.06)


def test_audio_length_limits(audio_dir: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "short.wav", _sine(0.03, 16000), 16000, subtype="PCM_16")  # 480 samples
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    sf.write(tmp_path / "one_frame.wav", _sine(0.04, 16000), 16000, subtype="PCM_16")  # exactly 640
    with pytest.raises(AudioTooShortError):
        load_audio(tmp_path / "short.wav")
    with pytest.raises(AudioTooShortError):
        load_audio(tmp_path / "empty.wav")
    assert len(load_audio(tmp_path / "one_frame.wav")) == 640
    for name in ["mono16k.wav", "s.mp3"]:
        with pytest.raises(AudioTooLongError) as info:
            load_audio(audio_dir / name, max_seconds=1.0)
        assert info.value.field == "driven_audio"
        assert len(load_audio(audio_dir / name, max_seconds=2.0)) > 0


def test_bad_audio_files(tmp_path: Path, picture: np.ndarray) -> None:
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(2).integers(0, 256, 4000, np.uint8).tobytes())
    (tmp_path / "text.mp3").write_text("hello, not audio")
    Image.fromarray(picture).save(tmp_path / "picture.m4a", format="PNG")  # ffmpeg opens it: no audio stream
    for name in ["noise.wav", "text.mp3", "picture.m4a", "missing.wav"]:
        with pytest.raises(AudioError) as info:
            load_audio(tmp_path / name)
        assert not isinstance(info.value, (AudioTooShortError, AudioTooLongError)), name
        with pytest.raises(AudioError):
            probe_audio_duration(tmp_path / name)
