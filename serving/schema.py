"""Request/response models of the HTTP API (plain Pydantic, no BentoML import).

Paths are typed as *strings* on purpose: in BentoML a `pathlib.Path` field means "upload this file",
while our contract is a server-side path. Python callers may still pass `Path` objects: a before-validator
turns any `os.PathLike` into its string, and the OpenAPI schema shows `type: string`.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

Preset = Literal["full", "crop"]
N_LANDMARKS = 68


def _fspath(value: Any) -> Any:
    """Accept `pathlib.Path` (any os.PathLike) from Python callers; leave everything else to str validation."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


ServerPath = Annotated[
    str,
    BeforeValidator(_fspath),
    Field(min_length=1, max_length=4096, description="Absolute path of a file on the server, inside an input root"),
]
RequestId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="Client-chosen idempotency key: resubmitting it with the same inputs does not render twice",
    ),
]
Point = Annotated[list[float], Field(min_length=2, max_length=2)]


class GenerateRequest(BaseModel):
    """Input of `/generate`: top-level JSON fields (also the keyword arguments of `bentoml.SyncHTTPClient`)."""

    model_config = ConfigDict(extra="forbid")

    driven_audio: ServerPath
    source_image: ServerPath
    option: Preset = Field(description="'crop': animate the cropped face; 'full': paste it back into the full image")
    request_id: RequestId | None = None
    landmarks: Annotated[list[Point], Field(min_length=N_LANDMARKS, max_length=N_LANDMARKS)] | None = Field(
        default=None,
        description="Optional 68 [x, y] face landmarks in original-image pixels (skips landmark detection)",
    )

    @field_validator("landmarks")
    @classmethod
    def _finite(cls, value: list[list[float]] | None) -> list[list[float]] | None:
        if value is not None:
            for index, (x, y) in enumerate(value):
                if not (math.isfinite(x) and math.isfinite(y)):
                    raise ValueError(f"point {index} is not finite: [{x}, {y}]")
        return value


class JobStatus(BaseModel):
    """One job as reported by `/status` and `/jobs`."""

    job_id: str
    request_id: str | None
    state: Literal["queued", "running", "completed", "failed"]
    progress: float = Field(description="Percent, 0-100")
    stage: str | None
    option: str
    source_image: str
    driven_audio: str
    output_path: str = Field(description="Where the video is (state 'completed') or will be written")
    error: str | None
    error_kind: str | None
    attempts: int
    queue_position: int | None = Field(default=None, description="1 = next to render (queued jobs only)")
    created_at: float
    started_at: float | None
    finished_at: float | None
    queued_seconds: float | None
    render_seconds: float | None


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128, description="The request_id given to /generate, or a job id")


class SystemInfo(BaseModel):
    device: str
    gpu_name: str | None
    gpu_memory_total_bytes: int | None
    gpu_memory_free_bytes: int | None
    models_loaded: bool
    pipeline: str
    checkpoint_dir: str
    checkpoint_bytes: int
    queue_depth: int
    running_job: str | None
    jobs_by_state: dict[str, int]
    max_queue: int
    accepting: bool
    uptime_seconds: float
    versions: dict[str, str]
    precision: str = "exact"  # SADTALKER_PRECISION: default precision of jobs
    compiled: bool = False  # SADTALKER_COMPILE: per-frame networks compiled at start-up
