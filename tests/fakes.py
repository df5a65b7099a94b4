"""TEST ONLY: a stand-in for `sadtalker.pipeline.SadTalker` that renders nothing, quickly. Not in the Bento.

Select it for a `bentoml serve` started from the repository root with
`SADTALKER_PIPELINE_FACTORY=tests.fakes:create` to exercise the HTTP contract, queue, restart and shutdown
behaviour without real models. It honours the pipeline's contract: the real stage names (`STAGES` of
`sadtalker.pipeline`), progress reports (`sadtalker.contracts.ProgressReport`: a fraction of the whole job and
the frames written so far), scratch files in `temp_dir`, the output written under a temporary name and renamed
into place when complete. Tunables (environment, read when the pipeline is built):

* SADTALKER_FAKE_RENDER_SECONDS (default 0.2): duration of one render, spread over the progress ticks.
* SADTALKER_FAKE_TICKS (default 10): progress reports per render (few = a pipeline that rarely checks in).
* SADTALKER_FAKE_FRAMES (default 25): frames per video; tick ``t`` reports ``frames * t // ticks`` written, so a
  render failing at the middle tick has written (and reported) ``frames * (ticks // 2) // ticks`` frames.
* SADTALKER_FAKE_CALLS_LOG (unset): a file that gets one line per render started (`<pid> <output name>`),
  so a test can count renders across processes.
* A source image whose file name contains "fail" fails with a render error, one containing "noface"
  with a no-face error, so failed jobs (transient and permanent) can be produced on demand.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sadtalker.contracts import ProgressCallback, ProgressReport
from sadtalker.errors import NoFaceError, RenderError

# A tiny but real MP4 header box ("ftyp"), so the output is recognisably an .mp4 file.
FAKE_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64
# The real pipeline's stages, in order (sadtalker/pipeline.py STAGES), without importing torch here.
STAGES = ("inputs", "face", "motion", "render")


@dataclass
class FakePipeline:
    """Sleeps through the stages, reporting progress; records every call in `calls`."""

    device: str = "cpu"
    render_seconds: float = 0.2
    ticks: int = 10
    frames: int = 25
    calls_log: Path | None = None
    on_tick: Callable[[int], None] | None = None  # test hook, called before each progress report
    scratch_frames: bool = True  # write a file per tick into the job's temp dir, as a real render's scratch
    calls: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def generate(
        self,
        source_image: str | Path,
        driven_audio: str | Path,
        output_path: str | Path,
        *,
        progress: ProgressCallback | None = None,
        temp_dir: Path | None = None,
        **request: Any,
    ) -> Path:
        output_path = Path(output_path)
        call = {
            "source_image": Path(source_image),
            "driven_audio": Path(driven_audio),
            "output_path": output_path,
            "temp_dir": temp_dir,
            "inputs": (Path(source_image).read_bytes(), Path(driven_audio).read_bytes()),
            **request,
        }
        with self._lock:
            self.calls.append(call)
        if self.calls_log is not None:
            with open(self.calls_log, "a") as log:
                log.write(f"{os.getpid()} {output_path.name}\n")
        scratch = Path(temp_dir) if temp_dir is not None and self.scratch_frames else None
        if scratch is not None:
            (scratch / "frames").mkdir(parents=True, exist_ok=True)
        name = Path(source_image).name
        for tick in range(self.ticks):
            if self.on_tick is not None:
                self.on_tick(tick)
            if progress is not None:
                stage = STAGES[tick * len(STAGES) // self.ticks]
                progress(ProgressReport(stage, tick / self.ticks, self.frames * tick // self.ticks, self.frames))
            if scratch is not None:
                (scratch / "frames" / f"{tick:05d}.png").write_bytes(b"fake frame")
            time.sleep(self.render_seconds / self.ticks)
            if tick == self.ticks // 2:
                if "noface" in name:
                    raise NoFaceError(f"{name}: no face found in the image")
                if "fail" in name:
                    raise RenderError(f"fake failure requested by the file name {name!r}")
        # Like sadtalker.video.VideoWriter: a hidden partial name that does not end in .mp4, then an atomic rename.
        partial = output_path.with_name(f".{output_path.stem}.{secrets.token_hex(4)}.partial")
        partial.write_bytes(FAKE_MP4)
        os.replace(partial, output_path)
        if progress is not None:
            progress(ProgressReport("render", 1.0, self.frames, self.frames))
        return output_path


def create(checkpoint_dir: Path, device: str, **_pipeline_options: Any) -> FakePipeline:
    """Factory for SADTALKER_PIPELINE_FACTORY (same call shape as the real pipeline class)."""
    del checkpoint_dir  # the fake loads nothing
    calls_log = os.environ.get("SADTALKER_FAKE_CALLS_LOG")
    return FakePipeline(
        device=device,
        render_seconds=float(os.environ.get("SADTALKER_FAKE_RENDER_SECONDS", "0.2")),
        ticks=int(os.environ.get("SADTALKER_FAKE_TICKS", "10")),
        frames=int(os.environ.get("SADTALKER_FAKE_FRAMES", "25")),
        calls_log=Path(calls_log) if calls_log else None,
        scratch_frames=os.environ.get("SADTALKER_FAKE_SCRATCH", "1") == "1",
    )
