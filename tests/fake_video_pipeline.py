"""TEST ONLY: the fake pipeline, but the video it writes is a real, tiny, playable mp4 (H.264 + AAC, 1 s, 64x64).

Select with SADTALKER_PIPELINE_FACTORY=tests.fake_video_pipeline:create (the server's working directory is the
repository root, so `tests` imports as a namespace package). Download and browser tests need a file a browser
can decode; the fake's placeholder bytes are only an mp4 header. The clip is encoded once per process with the
ffmpeg binary imageio-ffmpeg ships (synthetic test pattern + tone: no input files needed).
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from serving.fake_pipeline import FakePipeline

#: Uploaded files are renamed in the spool, so the fake's "fail in the file name" cannot mark them; an image whose
#: bytes contain this (after the PNG's end: decoders ignore it) fails the same way.
FAIL_CONTENT_MARKER = b"FAKE-FAIL"


@functools.cache
def tiny_mp4() -> bytes:
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="fake-video-") as scratch:
        out = Path(scratch) / "clip.mp4"
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=64x64:rate=25",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=16000",
                "-t",
                "1",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-movflags",
                "+faststart",
                str(out),
            ],
            check=True,
        )
        return out.read_bytes()


class VideoFakePipeline(FakePipeline):
    """FakePipeline (stages, progress, failure on demand, temp-dir contract), then a real mp4 at output_path."""

    def generate(self, source_image: Any, driven_audio: Any, output_path: Any, **kwargs: Any) -> Path:
        output_path = Path(output_path)
        temp_dir = kwargs.get("temp_dir")
        placeholder_dir = Path(temp_dir) if temp_dir is not None else output_path.parent
        placeholder = placeholder_dir / f"placeholder-{secrets.token_hex(4)}.mp4"
        if self.fail_marker and FAIL_CONTENT_MARKER in Path(source_image).read_bytes():
            source_image = Path(source_image).with_name(f"{self.fail_marker}-{Path(source_image).name}")
        super().generate(source_image, driven_audio, placeholder, **kwargs)
        placeholder.unlink(missing_ok=True)
        partial = output_path.with_name(f".{output_path.stem}.{secrets.token_hex(4)}.partial.mp4")
        partial.write_bytes(tiny_mp4())
        os.replace(partial, output_path)
        return output_path


def create(checkpoint_dir: Path, device: str, **_options: Any) -> VideoFakePipeline:
    del checkpoint_dir
    return VideoFakePipeline(
        device=device,
        render_seconds=float(os.environ.get("SADTALKER_FAKE_RENDER_SECONDS", "0.2")),
        fail_marker=os.environ.get("SADTALKER_FAKE_FAIL_MARKER", "fail") or None,
    )
