"""VideoWriter: H.264/AAC mp4 at 25 fps, exact frame count and duration, atomic output, clean failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sadtalker.errors import RenderError
from sadtalker.media import ffmpeg_exe
from sadtalker.video import VideoWriter, crop_to_even, probe_video

W, H = 47, 35  # odd on purpose: encoded as 46x34


def _frames(n: int, height: int = H, width: int = W) -> np.ndarray:
    """Solid-colour frames with a gradient, distinct per frame (easy to recognise after lossy coding)."""
    frames = np.zeros((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i, :, :, 0] = 40 + 6 * i
        frames[i, :, :, 1] = np.linspace(30, 220, width, dtype=np.uint8)[None, :]
        frames[i, :, :, 2] = 200 - 5 * i
    return frames


def _sine(seconds: float, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def _decode_rgb(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_crop_to_even() -> None:
    assert crop_to_even(np.zeros((35, 47, 3), np.uint8)).shape == (34, 46, 3)
    assert crop_to_even(np.zeros((2, 256, 255, 3), np.uint8)).shape == (2, 256, 254, 3)
    even = np.zeros((4, 6, 3), np.uint8)
    assert crop_to_even(even).shape == even.shape


def test_writes_h264_aac_with_exact_frames_and_duration(tmp_path: Path) -> None:
    out = tmp_path / "result.mp4"
    frames = _frames(12)
    with VideoWriter(out, audio=_sine(2.0), num_frames=12) as writer:
        writer.write(frames[:5])  # a batch
        for frame in frames[5:]:  # and single frames
            writer.write(frame)
        assert writer.size == (46, 34)
    info = probe_video(out)
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["audio_codec"] == "aac" and info["audio_sample_rate"] == 16000
    assert (info["width"], info["height"], info["fps"], info["frames"]) == (46, 34, 25.0, 12)
    assert info["audio_duration"] == pytest.approx(12 / 25, abs=1e-3)  # cut to the video: 0.48 s of 2 s
    assert _leftovers(tmp_path, {"result.mp4"}) == []
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: playable while downloading
    decoded = _decode_rgb(out, 46, 34).astype(np.int16)
    assert decoded.shape[0] == 12
    assert np.abs(decoded - frames[:, :34, :46]).mean() < 3  # crf 18 on flat content: near lossless


def test_temporary_wav_goes_to_temp_dir_and_is_removed(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with VideoWriter(tmp_path / "out.mp4", audio=_sine(1.0), num_frames=4, temp_dir=scratch) as writer:
        writer.write(_frames(2))
        assert [p.suffix for p in scratch.iterdir()] == [".wav"]
        writer.write(_frames(2))
    assert list(scratch.iterdir()) == []
    assert probe_video(tmp_path / "out.mp4")["frames"] == 4


def test_audio_from_file_shorter_than_video_is_padded(tmp_path: Path) -> None:
    sf.write(tmp_path / "speech.wav", _sine(0.2, 22050), 22050, subtype="PCM_16")
    with VideoWriter(tmp_path / "out.mp4", audio=tmp_path / "speech.wav", num_frames=15) as writer:
        writer.write(_frames(15))
    info = probe_video(tmp_path / "out.mp4")
    assert info["frames"] == 15
    assert info["audio_sample_rate"] == 22050
    assert info["audio_duration"] == pytest.approx(15 / 25, abs=1e-3)  # 0.2 s of speech + silence


def test_audio_needs_the_frame_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_frames"):
        VideoWriter(tmp_path / "out.mp4", audio=_sine(1.0))


def test_silent_video_and_even_input(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "silent.mp4") as writer:
        writer.write(_frames(3, 32, 48))
    info = probe_video(tmp_path / "silent.mp4")
    assert (info["width"], info["height"], info["frames"]) == (48, 32, 3)
    assert info["audio_codec"] is None


def test_replaces_existing_output_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old")
    with VideoWriter(out, audio=_sine(1.0), num_frames=2) as writer:
        writer.write(_frames(2))
    assert probe_video(out)["frames"] == 2
    assert _leftovers(tmp_path, {"out.mp4"}) == []


def test_exception_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyError):
        with VideoWriter(out, audio=_sine(1.0), num_frames=10) as writer:
            writer.write(_frames(4))
            proc = writer._proc
            raise KeyError("render failed")
    assert proc is not None and proc.poll() is not None  # ffmpeg was killed and reaped
    assert not out.exists()
    assert _leftovers(tmp_path, set()) == []  # neither the partial mp4 nor the temporary wav


def test_ffmpeg_failure_is_a_render_error(tmp_path: Path) -> None:
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = tmp_path / "out.mp4"
    with pytest.raises(RenderError, match="ffmpeg") as info:
        with VideoWriter(out, audio=tmp_path / "broken.wav", num_frames=3) as writer:
            writer.write(_frames(3))
    assert "broken.wav" in str(info.value) or "Invalid" in str(info.value)  # ffmpeg's own words
    assert _leftovers(tmp_path, {"broken.wav"}) == []
    with pytest.raises(RenderError, match="ffmpeg"):
        with VideoWriter(tmp_path / "o2.mp4", preset="no-such-preset") as writer:
            writer.write(_frames(3))
    assert _leftovers(tmp_path, {"broken.wav"}) == []


def test_misuse_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="announced"):
        with VideoWriter(tmp_path / "a.mp4", audio=_sine(1.0), num_frames=5) as writer:
            writer.write(_frames(3))
    with pytest.raises(RenderError, match="no frames"):
        with VideoWriter(tmp_path / "b.mp4"):
            pass
    with pytest.raises(ValueError, match="differs"):
        with VideoWriter(tmp_path / "c.mp4") as writer:
            writer.write(_frames(1))
            writer.write(_frames(1, 20, 20))
    with pytest.raises(ValueError, match="uint8"):
        with VideoWriter(tmp_path / "d.mp4") as writer:
            writer.write(_frames(1).astype(np.float32))
    assert _leftovers(tmp_path, set()) == []
