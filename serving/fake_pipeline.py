"""DEV/TEST ONLY: a stand-in for `sadtalker.pipeline.SadTalker` that renders nothing, quickly.

Select it with `SADTALKER_PIPELINE_FACTORY=serving.fake_pipeline:create` to exercise the HTTP contract,
queue, restart and shutdown behaviour without real models. It honours the pipeline's file contract:
scratch files in `temp_dir`, output written under a temporary name and renamed into place when
complete. Tunables (environment, read when the pipeline is built):

* SADTALKER_FAKE_RENDER_SECONDS (default 0.2): duration of one render, spread over 10 progress ticks.
* SADTALKER_FAKE_FAIL_MARKER (default "fail"): a source image whose file name contains it fails with
  RenderError, so failed jobs can be produced on demand.
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

# A tiny but real MP4 header box ("ftyp"), so the output is recognisably an .mp4 file.
FAKE_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64
STAGES = ("preprocess", "audio2coeff", "render", "encode")


@dataclass
class FakePipeline:
    """Sleeps through the stages, reporting progress; records every call in `calls`."""

    device: str = "cpu"
    render_seconds: float = 0.2
    fail_marker: str | None = "fail"
    ticks: int = 10
    on_tick: Callable[[int], None] | None = None  # test hook, called before each progress report
    calls: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def generate(
        self,
        source_image: str | Path,
        driven_audio: str | Path,
        output_path: str | Path,
        *,
        preset: str | None = None,
        options: Any = None,
        landmarks: Any = None,
        progress: Callable[[str, float], None] | None = None,
        temp_dir: Path | None = None,
    ) -> Path:
        from sadtalker.errors import RenderError

        output_path = Path(output_path)
        with self._lock:
            self.calls.append(
                {
                    "source_image": Path(source_image),
                    "driven_audio": Path(driven_audio),
                    "output_path": output_path,
                    "preset": preset,
                    "landmarks": landmarks,
                    "temp_dir": temp_dir,
                }
            )
        scratch = Path(temp_dir) if temp_dir is not None else None
        if scratch is not None:
            (scratch / "frames").mkdir(parents=True, exist_ok=True)
        for tick in range(self.ticks):
            if self.on_tick is not None:
                self.on_tick(tick)
            if progress is not None:
                progress(STAGES[tick * len(STAGES) // self.ticks], tick / self.ticks)
            if scratch is not None:
                (scratch / "frames" / f"{tick:05d}.png").write_bytes(b"fake frame")
            time.sleep(self.render_seconds / self.ticks)
            if self.fail_marker and self.fail_marker in Path(source_image).name and tick == self.ticks // 2:
                raise RenderError(f"fake failure requested by the file name {Path(source_image).name!r}")
        partial = output_path.with_name(f".{output_path.stem}.{secrets.token_hex(4)}.partial.mp4")  # as VideoWriter
        partial.write_bytes(FAKE_MP4)
        os.replace(partial, output_path)
        if progress is not None:
            progress("done", 1.0)
        return output_path


def create(checkpoint_dir: Path, device: str, **_pipeline_options: Any) -> FakePipeline:
    """Factory for SADTALKER_PIPELINE_FACTORY (same call shape as the real pipeline class)."""
    del checkpoint_dir  # the fake loads nothing
    return FakePipeline(
        device=device,
        render_seconds=float(os.environ.get("SADTALKER_FAKE_RENDER_SECONDS", "0.2")),
        fail_marker=os.environ.get("SADTALKER_FAKE_FAIL_MARKER", "fail") or None,
    )
