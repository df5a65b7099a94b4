"""TEST ONLY: tests/fakes.py's pipeline, but the video it writes is a real, tiny, playable mp4 (H.264 + AAC, 1 s).

Select with SADTALKER_PIPELINE_FACTORY=tests.fake_video_pipeline:create (the server's working directory is the
repository root, so `tests` imports as a namespace package). Download and browser tests need a file a browser
can decode; the fake's placeholder bytes are only an mp4 header. The clip is encoded once per process with the
ffmpeg binary imageio-ffmpeg ships (synthetic test pattern + tone: no input files needed).
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from sadtalker.contracts import FPS
from tests.fakes import FakePipeline
from tests.fakes import create as create_fake

#: Uploaded files are renamed in the spool, so the fake's "fail"/"noface" in the file name cannot mark them; an
#: image whose bytes contain one of these (after the PNG's end: decoders ignore it) fails the same way: a render
#: error (transient: resubmitting queues it again) or a no-face error (permanent: resubmitting is a 409).
FAIL_CONTENT_MARKER = b"FAKE-FAIL"
NOFACE_CONTENT_MARKER = b"FAKE-NOFACE"


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
                f"testsrc=size=64x64:rate={FPS}",
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
    """tests.fakes.FakePipeline (real stage names, progress, the library's errors on demand, temp-dir contract),
    then a real mp4 at output_path."""

    def generate(self, source_image: Any, driven_audio: Any, output_path: Any, **kwargs: Any) -> Path:
        output_path = Path(output_path)
        temp_dir = kwargs.get("temp_dir")
        placeholder_dir = Path(temp_dir) if temp_dir is not None else output_path.parent
        placeholder = placeholder_dir / f"placeholder-{secrets.token_hex(4)}.mp4"
        content = Path(source_image).read_bytes()
        for marker, word in ((NOFACE_CONTENT_MARKER, "noface"), (FAIL_CONTENT_MARKER, "fail")):
            if marker in content:
                # The base fake decides by file name: hand it a copy whose name carries the word.
                placeholder_dir.mkdir(parents=True, exist_ok=True)
                marked = placeholder_dir / f"{word}-{Path(source_image).name}"
                shutil.copyfile(source_image, marked)
                source_image = marked
                break
        super().generate(source_image, driven_audio, placeholder, **kwargs)
        placeholder.unlink(missing_ok=True)
        partial = output_path.with_name(f".{output_path.stem}.{secrets.token_hex(4)}.partial.mp4")
        partial.write_bytes(tiny_mp4())
        os.replace(partial, output_path)
        return output_path


def create(checkpoint_dir: Path, device: str, **options: Any) -> VideoFakePipeline:
    """Factory for SADTALKER_PIPELINE_FACTORY; the same tunables (environment) as `tests.fakes.create`."""
    base = create_fake(checkpoint_dir, device, **options)
    return VideoFakePipeline(
        device=base.device,
        render_seconds=base.render_seconds,
        ticks=base.ticks,
        frames=base.frames,
        calls_log=base.calls_log,
    )
