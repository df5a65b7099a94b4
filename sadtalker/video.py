"""Encoding the result: RGB frames streamed into one ffmpeg process -> H.264/AAC mp4, written atomically.

Frame size: yuv420p needs even width and height, so odd frames lose their last row/column
(``crop_to_even``). Cropping, rather than padding or scaling, is what the original pipeline's intermediate
video did to its odd-sized frames (the golden full-mode paste-back is reproduced only from the even-cropped
frame), it keeps every remaining pixel untouched, and it costs at most one line of pixels.

Audio: the driving audio is muxed as AAC, padded with silence or cut to exactly ``num_frames / fps``
(``-af apad -t``). The frame count must therefore be given up front when there is audio (the pipeline knows
it before rendering). ``-shortest`` is not used: it is only accurate to an AAC packet, cuts the video when the
audio is shorter, and with ``apad`` it overshoots by up to x264's lookahead (measured: 1.5 s of audio for a
0.4 s video).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import threading
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from sadtalker.contracts import FPS, SAMPLE_RATE
from sadtalker.errors import RenderError
from sadtalker.media import ffmpeg_exe

STDERR_TAIL_LINES = 20


def crop_to_even(frames: np.ndarray) -> np.ndarray:
    """Drop the last row and/or column of frames with odd height/width (``(H, W, 3)`` or ``(N, H, W, 3)``)."""
    height, width = frames.shape[-3], frames.shape[-2]
    return frames[..., : height - height % 2, : width - width % 2, :]


class VideoWriter:
    """Context manager streaming RGB uint8 frames to ``path`` as an H.264 (yuv420p) + AAC mp4 at ``fps``.

    ``audio`` is an audio file path (muxed from the file as is) or a mono float waveform at
    ``audio_sample_rate`` (written to a temporary wav in ``temp_dir``, default the output's directory, and
    always deleted), or None for a silent video. ``num_frames`` is the number of frames that will be written
    (required with audio, which then lasts exactly ``num_frames / fps``); ``close`` raises RenderError if a
    different count was written.
    The mp4 is written under a temporary name in the output's directory and renamed into place only when
    ffmpeg succeeded; on any error the temporary files are removed and ffmpeg is killed.

    Not thread-safe: one writer per output, fed from one thread.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        audio: str | Path | np.ndarray | None = None,
        audio_sample_rate: int = SAMPLE_RATE,
        num_frames: int | None = None,
        fps: int = FPS,
        crf: int = 18,
        preset: str = "medium",
        audio_bitrate: str = "128k",
        timeout_s: float = 600.0,
        temp_dir: str | Path | None = None,
    ) -> None:
        if audio is not None and num_frames is None:
            raise ValueError("num_frames is required when audio is given (the audio is cut to num_frames / fps)")
        if num_frames is not None and num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        self.path = Path(path)
        self.fps = fps
        self.num_frames = num_frames
        self.crf = crf
        self.preset = preset
        self.audio_bitrate = audio_bitrate
        self.timeout_s = timeout_s
        self._audio = audio
        self._audio_sample_rate = audio_sample_rate
        token = uuid.uuid4().hex[:12]
        # Next to the output so that the final rename is atomic (same file system); the name does NOT end in .mp4
        # (ffmpeg gets `-f mp4`), so a client globbing "*.mp4" in the output folder never sees a half-written video.
        self._tmp_video = self.path.with_name(f".{self.path.stem}.{token}.partial")
        audio_dir = Path(temp_dir) if temp_dir is not None else self.path.parent
        self._tmp_audio = audio_dir / f".{self.path.stem}.{token}.audio.wav"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_thread: threading.Thread | None = None
        self._size: tuple[int, int] | None = None  # (width, height) after crop_to_even
        self._frames = 0
        self._closed = False

    # ---------------------------------------------------------------------------------------------- public

    @property
    def size(self) -> tuple[int, int] | None:
        """``(width, height)`` of the encoded video (even), known after the first frame."""
        return self._size

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` frame or a batch ``(N, H, W, 3)``; uint8 RGB, all the same size."""
        if self._closed:
            raise RenderError("VideoWriter is closed")
        batch = frames[None] if frames.ndim == 3 else frames
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (H, W, 3) or (N, H, W, 3), got {frames.dtype} {frames.shape}")
        batch = crop_to_even(batch)
        height, width = batch.shape[1:3]
        if self._size is None:
            if width < 2 or height < 2:
                raise ValueError(f"frames of {frames.shape[-2]}x{frames.shape[-3]} are too small to encode")
            self._size = (width, height)
            self._start()
        elif (width, height) != self._size:
            first_w, first_h = self._size
            raise ValueError(f"frame size {width}x{height} differs from the first frame's {first_w}x{first_h}")
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(batch).tobytes())
        except (BrokenPipeError, ValueError, OSError):
            # ffmpeg exited early; its stderr says why.
            self._kill()
            self._cleanup()
            raise RenderError(f"ffmpeg stopped accepting frames: {self._stderr_text()}") from None
        self._frames += len(batch)

    def close(self) -> Path:
        """Finish encoding, check ffmpeg's result and move the file into place; returns the output path."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            if self._proc is None:
                raise RenderError("no frames were written")
            if self.num_frames is not None and self._frames != self.num_frames:
                raise RenderError(f"{self._frames} frames were written, {self.num_frames} were announced")
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
            except OSError:
                pass  # a dead ffmpeg is reported by its exit status below
            try:
                code = self._proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise RenderError(f"ffmpeg did not finish within {self.timeout_s:g} s") from None
            self._join_stderr()
            if code != 0:
                raise RenderError(f"ffmpeg failed with exit status {code}: {self._stderr_text()}")
            if not self._tmp_video.is_file() or self._tmp_video.stat().st_size == 0:
                raise RenderError(f"ffmpeg produced no output: {self._stderr_text()}")
            os.replace(self._tmp_video, self.path)
            return self.path
        except BaseException:
            self._kill()
            raise
        finally:
            self._cleanup()

    def abort(self) -> None:
        """Kill ffmpeg and remove every temporary file; the output path is left untouched."""
        self._closed = True
        self._kill()
        self._cleanup()

    # --------------------------------------------------------------------------------------------- private

    def _start(self) -> None:
        assert self._size is not None
        try:
            audio_path = self._prepare_audio()
            cmd = self._command(audio_path)
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0
            )
        except BaseException:
            self._cleanup()
            raise
        self._stderr_thread = threading.Thread(
            target=_drain, args=(self._proc.stderr, self._stderr_tail), name="ffmpeg-stderr", daemon=True
        )
        self._stderr_thread.start()

    def _prepare_audio(self) -> Path | None:
        if self._audio is None:
            return None
        if isinstance(self._audio, np.ndarray):
            import soundfile as sf

            wav = np.asarray(self._audio, dtype=np.float32)
            if wav.ndim != 1:
                raise ValueError(f"audio waveform must be mono (N,), got shape {wav.shape}")
            # Float wav: no clipping or requantisation before the AAC encoder.
            sf.write(str(self._tmp_audio), wav, self._audio_sample_rate, subtype="FLOAT", format="WAV")
            return self._tmp_audio
        path = Path(self._audio)
        if not path.is_file():
            raise RenderError(f"audio file {path} not found")
        return path

    def _command(self, audio_path: Path | None) -> list[str]:
        assert self._size is not None
        width, height = self._size
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(self.fps)]
        cmd += ["-i", "pipe:0"]
        if audio_path is not None:
            cmd += ["-i", str(audio_path)]
        cmd += ["-map", "0:v:0"]
        cmd += ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p"]
        if audio_path is not None:
            assert self.num_frames is not None
            # Silence-padded, then cut to the video's exact length (sample-accurate, unlike -shortest).
            cmd += ["-map", "1:a:0", "-c:a", "aac", "-b:a", self.audio_bitrate, "-af", "apad"]
            cmd += ["-t", f"{self.num_frames / self.fps:.6f}"]
        cmd += ["-movflags", "+faststart", "-f", "mp4", str(self._tmp_video)]
        return cmd

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill -9 does not time out in practice
            pass
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        self._join_stderr()

    def _join_stderr(self) -> None:
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=10)

    def _cleanup(self) -> None:
        for tmp in (self._tmp_video, self._tmp_audio):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass

    def _stderr_text(self) -> str:
        self._join_stderr()
        return " | ".join(self._stderr_tail) or "(no message)"


def _drain(stream: IO[bytes] | None, tail: collections.deque[str]) -> None:
    """Read ffmpeg's stderr continuously (a full pipe would block it) and keep the last lines."""
    if stream is None:
        return
    with stream:
        for raw in stream:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                tail.append(line)


# ----------------------------------------------------------------------------------------------- probing

_VIDEO_RE = re.compile(
    r"Stream #\d+:\d+\S*: Video: (\w+)[^\n]*?, (\w+)(?:\([^)]*\))?, (\d+)x(\d+)[^\n]*?, ([\d.]+) fps"
)
_AUDIO_RE = re.compile(r"Stream #\d+:\d+\S*: Audio: (\w+)[^\n]*?, (\d+) Hz, ([^,\n]+)")
_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


def probe_video(path: str | Path) -> dict[str, Any]:
    """Describe a video file with the bundled ffmpeg.

    Keys: ``video_codec``, ``pix_fmt``, ``width``, ``height``, ``fps``, ``frames`` (counted packet by packet),
    ``duration`` (container, s), ``audio_codec``, ``audio_sample_rate``, ``audio_channels`` and
    ``audio_duration`` (decoded samples / rate, s); audio keys are None without an audio stream.
    Raises RenderError if ffmpeg cannot read the file.
    """
    path = Path(path)
    header = _run_ffmpeg(["-i", str(path)], check=False)
    text = header.stderr.decode("utf-8", "replace")
    video = _VIDEO_RE.search(text)
    if "Input #0" not in text or video is None:
        raise RenderError(f"{path.name}: not a readable video ({text.strip().splitlines()[-1:] or 'no output'})")
    info: dict[str, Any] = {
        "video_codec": video.group(1),
        "pix_fmt": video.group(2),
        "width": int(video.group(3)),
        "height": int(video.group(4)),
        "fps": float(video.group(5)),
    }
    duration = _DURATION_RE.search(text)
    info["duration"] = (
        int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3)) if duration else None
    )
    # Count video packets without decoding (-c copy); -progress prints the final count as "frame=N".
    source = ["-v", "error", "-i", str(path)]
    counted = _run_ffmpeg(
        [*source, "-map", "0:v:0", "-c", "copy", "-f", "null", "-", "-progress", "pipe:1", "-nostats"]
    )
    frames = re.findall(r"^frame=(\d+)", counted.stdout.decode("utf-8", "replace"), flags=re.MULTILINE)
    info["frames"] = int(frames[-1]) if frames else 0
    audio = _AUDIO_RE.search(text)
    info.update(audio_codec=None, audio_sample_rate=None, audio_channels=None, audio_duration=None)
    if audio is not None:
        rate = int(audio.group(2))
        samples = _run_ffmpeg(
            [*source, "-map", "0:a:0", "-ac", "1", "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]
        ).stdout
        info.update(
            audio_codec=audio.group(1),
            audio_sample_rate=rate,
            audio_channels=audio.group(3).strip(),
            audio_duration=len(samples) // 4 / rate,
        )
    return info


def _run_ffmpeg(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise RenderError(f"ffmpeg timed out: {' '.join(cmd[:6])} ...") from None
    if check and proc.returncode != 0:
        raise RenderError(f"ffmpeg failed: {proc.stderr.decode('utf-8', 'replace').strip()[-500:]}")
    return proc
