"""End to end through ``SadTalker.generate``: files in, a playable mp4 out, on CPU with synthetic weights."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import load_golden

from sadtalker import errors
from sadtalker.media import ffmpeg_exe
from sadtalker.options import GenerateOptions
from sadtalker.pipeline import SadTalker
from sadtalker.video import probe_video

CROP_CASE = "crop_people0_256"
FULL_CASE = "fullstill_full3_256"
CASE_IMAGES = {CROP_CASE: "people_0.png", FULL_CASE: "full3.png"}


@pytest.fixture(scope="module")
def talker(synthetic_checkpoints: Path) -> SadTalker:
    # One face per frame for GFPGAN: random RetinaFace weights "see" hundreds of faces in any picture.
    return SadTalker(synthetic_checkpoints, "cpu", enhancer=True, enhancer_max_faces=1)


def _case(reference_dir: Path, name: str) -> tuple[Path, np.ndarray, Path]:
    case_dir = reference_dir / "golden" / name
    with np.load(case_dir / "inputs.npz") as inputs:
        landmarks = inputs["lm68_orig"]
    wav = next(case_dir.glob("*.wav"))
    return case_dir / CASE_IMAGES[name], landmarks, wav


def _short_wav(source: Path, out: Path, frames: int) -> Path:
    """The first ``frames`` video frames' worth of a 16 kHz wav (+ half a frame, which is dropped)."""
    samples, rate = soundfile.read(source, dtype="int16")
    soundfile.write(out, samples[: frames * 640 + 320], rate)
    return out


def _first_frame(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


def _as_yuv420p(image: np.ndarray) -> np.ndarray:
    """``image`` as yuv420p can hold it (ffmpeg's own RGB->YUV->RGB conversion, no codec involved)."""
    height, width = image.shape[:2]
    convert = [ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-s", f"{width}x{height}"]
    yuv = subprocess.run(
        [*convert, "-pix_fmt", "rgb24", "-i", "-", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
        input=image.tobytes(), capture_output=True, check=True,
    ).stdout
    rgb = subprocess.run(
        [*convert, "-pix_fmt", "yuv420p", "-i", "-", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        input=yuv, capture_output=True, check=True,
    ).stdout
    return np.frombuffer(rgb, np.uint8).reshape(image.shape)


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("preset", "case", "size_wh"),
    [("crop", CROP_CASE, (512, 512)), ("full", FULL_CASE, (1024, 1536))],
)
def test_preset_end_to_end(
    talker: SadTalker, reference_dir: Path, tmp_path: Path, preset: str, case: str, size_wh: tuple[int, int]
) -> None:
    image, landmarks, wav = _case(reference_dir, case)
    audio = _short_wav(wav, tmp_path / "speech.wav", frames=3)
    out_dir, work = tmp_path / "out", tmp_path / "work"
    out_dir.mkdir()
    work.mkdir()
    stages: list[tuple[str, float]] = []
    output = talker.generate(
        image, audio, out_dir / "clip.mp4", preset=preset, landmarks=landmarks, temp_dir=work,
        progress=lambda stage, fraction: stages.append((stage, fraction)),
    )
    assert output == out_dir / "clip.mp4"
    info = probe_video(output)
    assert (info["video_codec"], info["audio_codec"], info["pix_fmt"]) == ("h264", "aac", "yuv420p")
    assert info["fps"] == 25
    assert info["frames"] == 3  # int(len(audio) / 640): the trailing half frame is dropped, as the original
    # GFPGAN pastes back at twice the size, as the original's GFPGANer(upscale=2).
    assert (info["width"], info["height"]) == size_wh
    assert sorted(p.name for p in out_dir.iterdir()) == ["clip.mp4"]
    assert _leftovers(work) == []
    fractions = [fraction for _, fraction in stages]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert [s for s, _ in stages][:4] == ["inputs", "face", "motion", "render"]


@pytest.mark.parametrize("case", [CROP_CASE, FULL_CASE])
def test_golden_case_frame0_psnr(talker: SadTalker, reference_dir: Path, tmp_path: Path, case: str) -> None:
    """Seed 0 reproduces the original's recorded randomness (python random / torch generator seeded with 0)."""
    image, landmarks, wav = _case(reference_dir, case)
    golden = load_golden(reference_dir / "golden" / case)
    preset = "crop" if case == CROP_CASE else "full"
    options = GenerateOptions.preset(preset, enhancer="none", seed=0, max_frames=2)
    output = talker.generate(image, wav, tmp_path / "clip.mp4", options=options, landmarks=landmarks)
    info = probe_video(output)
    assert info["frames"] == 2
    expected = golden["video_frame0_uint8"] if preset == "crop" else golden["paste_full_frame0"]
    expected = expected[: expected.shape[0] // 2 * 2, : expected.shape[1] // 2 * 2]  # yuv420p: even sizes
    frame = _first_frame(output, info["width"], info["height"])
    assert frame.shape == expected.shape
    # yuv420p (what browsers play) halves the chroma resolution; on the noise-like frames of random weights that
    # alone caps RGB PSNR at ~28 dB, whoever encodes them (the original encodes yuv420p too).  So: luma against
    # the golden frame, and RGB against the golden frame as yuv420p can represent it.
    assert _psnr(_luma(frame), _luma(expected)) >= 30.0
    assert _psnr(frame, _as_yuv420p(expected)) >= 30.0


def test_input_errors_are_typed_and_leave_nothing(talker: SadTalker, reference_dir: Path, tmp_path: Path) -> None:
    image, landmarks, wav = _case(reference_dir, CROP_CASE)
    out = tmp_path / "out"
    out.mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    tiny = tmp_path / "tiny.wav"
    soundfile.write(tiny, np.zeros(300, np.int16), 16000)
    cases = [
        (dict(source_image=broken, driven_audio=wav), errors.ImageError, "source_image"),
        (dict(source_image=text, driven_audio=wav), errors.ImageError, "source_image"),
        (dict(source_image=image, driven_audio=text), errors.AudioError, "driven_audio"),
        (dict(source_image=image, driven_audio=tiny), errors.AudioTooShortError, "driven_audio"),
    ]
    for kwargs, error, field in cases:
        with pytest.raises(error) as raised:
            talker.generate(**kwargs, output_path=out / "x.mp4", preset="crop", landmarks=landmarks)
        assert raised.value.field == field
        assert str(raised.value)
    capped = SadTalker.__new__(SadTalker)
    capped.__dict__.update(talker.__dict__, max_audio_seconds=1.0)
    with pytest.raises(errors.AudioTooLongError, match="1"):
        capped.generate(image, wav, out / "x.mp4", preset="crop", landmarks=landmarks)
    with pytest.raises(errors.InputError) as raised:
        talker.generate(image, wav, out / "x.mp4", preset="crop", landmarks=landmarks[:10])
    assert raised.value.field == "landmarks"
    assert list(out.iterdir()) == []


def test_failure_mid_render_leaves_no_files(
    talker: SadTalker, reference_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, landmarks, wav = _case(reference_dir, CROP_CASE)
    audio = _short_wav(wav, tmp_path / "speech.wav", frames=4)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    original = SadTalker.compose
    calls = {"n": 0}

    def failing_compose(self, frames, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # after one batch was already encoded
            raise RuntimeError("injected failure")
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(SadTalker, "compose", failing_compose)
    options = GenerateOptions.preset("crop", enhancer="none", batch_size=2)
    with pytest.raises(RuntimeError, match="injected failure"):
        talker.generate(image, audio, out / "clip.mp4", options=options, landmarks=landmarks, temp_dir=work)
    assert calls["n"] == 2
    assert list(out.iterdir()) == []
    assert _leftovers(work) == []


def test_no_face_is_reported(talker: SadTalker, reference_dir: Path, tmp_path: Path, monkeypatch) -> None:
    image, _, wav = _case(reference_dir, CROP_CASE)

    def no_face(*args, **kwargs):
        raise errors.NoFaceError("no face found in people_0.png; use a clear frontal photo or pass landmarks")

    monkeypatch.setattr(talker.landmarker, "detect", no_face)
    with pytest.raises(errors.NoFaceError, match="no face") as raised:
        talker.generate(image, wav, tmp_path / "x.mp4", preset="crop")
    assert raised.value.field == "source_image"
    assert not (tmp_path / "x.mp4").exists()


def test_command_line_renders_into_result_dir(
    synthetic_checkpoints: Path, reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sadtalker.__main__ import main
    from serving.naming import OUTPUT_NAME_PATTERN

    image, landmarks, wav = _case(reference_dir, CROP_CASE)
    audio = _short_wav(wav, tmp_path / "speech.wav", frames=2)
    np.save(tmp_path / "landmarks.npy", landmarks)
    code = main([
        "--source_image", str(image), "--driven_audio", str(audio), "--result_dir", str(tmp_path / "results"),
        "--checkpoint_dir", str(synthetic_checkpoints), "--landmarks", str(tmp_path / "landmarks.npy"),
        "--preprocess", "crop", "--enhancer", "none", "--seed", "0", "--cpu",
    ])
    assert code == 0
    output = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert output.parent == tmp_path / "results" and OUTPUT_NAME_PATTERN.fullmatch(output.name)
    assert probe_video(output)["frames"] == 2
    assert main(["--source_image", str(image), "--driven_audio", str(audio), "--landmarks", str(audio)]) == 2
