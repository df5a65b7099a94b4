"""Request/response models of the HTTP API (plain Pydantic, no BentoML import).

Paths are typed as *strings* on purpose: in BentoML a `pathlib.Path` field means "upload this file",
while our contract is a server-side path. Python callers may still pass `Path` objects: a before-validator
turns any `os.PathLike` into its string, and the OpenAPI schema shows `type: string`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from sadtalker.contracts import LANDMARK_COUNT
from sadtalker.options import GenerateOptions, Preset


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
# Strict: JSON numbers only (a string "1" is refused); integers are taken as floats.
Coordinate = Annotated[float, Field(strict=True)]
Point = Annotated[list[Coordinate], Field(min_length=2, max_length=2)]
Landmarks = Annotated[list[Point], Field(min_length=LANDMARK_COUNT, max_length=LANDMARK_COUNT)]
# Head angles in degrees (JSON numbers only); count and range are GenerateOptions' rules (see `_angles`).
Angles = Annotated[list[Coordinate], Field(min_length=1)]

#: The request fields that name input FILES, required ones first. Validation checks each one given (inside the
#: roots, size cap, format), the worker snapshots each into the job's temp dir, uploads accept each as a file.
INPUT_FILE_FIELDS: tuple[str, ...] = ("source_image", "driven_audio", "ref_eyeblink", "ref_pose")
REQUIRED_FILE_FIELDS: tuple[str, ...] = ("source_image", "driven_audio")
#: Optional reference videos (`sadtalker.face.reference`).
VIDEO_FIELDS: tuple[str, ...] = ("ref_eyeblink", "ref_pose")
ANGLE_FIELDS: tuple[str, ...] = ("input_yaw", "input_pitch", "input_roll")


def _angles(name: str, value: list[float] | tuple[float, ...] | None) -> tuple[float, ...] | None:
    """``value`` checked by GenerateOptions' own rule for ``name`` (count, finite, range): one rule, two callers."""
    if value is None:
        return None
    return getattr(GenerateOptions(**{name: value}), name)  # type: ignore[arg-type]


class GenerateRequest(BaseModel):
    """Input of `/generate`: top-level JSON fields (also the keyword arguments of `bentoml.SyncHTTPClient`)."""

    model_config = ConfigDict(extra="forbid")

    driven_audio: ServerPath
    source_image: ServerPath
    option: Preset = Field(description="'crop': animate the cropped face; 'full': paste it back into the full image")
    request_id: RequestId | None = None
    landmarks: Landmarks | None = Field(
        default=None,
        description="Optional 68 [x, y] face landmarks in original-image pixels (skips landmark detection)",
    )
    ref_eyeblink: ServerPath | None = Field(
        default=None, description="Optional reference video (server path): the face's expression/blinks follow it"
    )
    ref_pose: ServerPath | None = Field(
        default=None, description="Optional reference video (server path): the head pose follows it"
    )
    input_yaw: Angles | None = Field(
        default=None, description="Optional head yaw in degrees: one value for the clip, or several interpolated"
    )
    input_pitch: Angles | None = Field(default=None, description="Optional head pitch in degrees (as input_yaw)")
    input_roll: Angles | None = Field(default=None, description="Optional head roll in degrees (as input_yaw)")

    @field_validator(*ANGLE_FIELDS)
    @classmethod
    def _angle_rules(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        checked = _angles(str(info.field_name), value)
        return None if checked is None else list(checked)

    @field_validator("landmarks")
    @classmethod
    def _finite(cls, value: list[list[float]] | None) -> list[list[float]] | None:
        if value is not None:
            for index, (x, y) in enumerate(value):
                if not (math.isfinite(x) and math.isfinite(y)):
                    raise ValueError(f"point {index} is not finite: [{x}, {y}]")
        return value


class JobRequest(BaseModel):
    """THE request of a job: made once by validation, stored as one JSON column, handed to the pipeline as is.

    Every field except ``request_id`` is passed to the pipeline's ``generate`` as a keyword argument of the same
    name (``pipeline_arguments``), so a new optional request field is added here, in `GenerateRequest` (its
    HTTP form) and in the pipeline, and nothing in the store, the job service or the worker changes. Paths
    are resolved (absolute, symlink-free) and inside the input roots when validation made it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_image: str
    driven_audio: str
    preset: Preset
    request_id: str | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None
    audio_seconds: float | None = Field(default=None, description="Measured at validation (for metrics)")
    # Motion controls (issue 14): the pipeline's keyword arguments of the same names.
    ref_eyeblink: str | None = None
    ref_pose: str | None = None
    input_yaw: tuple[float, ...] | None = None
    input_pitch: tuple[float, ...] | None = None
    input_roll: tuple[float, ...] | None = None

    #: Fields the service keeps about the request, not inputs of the render (not passed to the pipeline).
    SERVICE_FIELDS: ClassVar[frozenset[str]] = frozenset({"request_id", "audio_seconds"})
    #: Fields naming input files (see INPUT_FILE_FIELDS): the worker passes the pipeline temp-dir copies of them.
    FILE_FIELDS: ClassVar[tuple[str, ...]] = INPUT_FILE_FIELDS

    def input_files(self) -> dict[str, str]:
        """The input files this request names, by field (optional ones only when given)."""
        return {name: path for name in self.FILE_FIELDS if (path := getattr(self, name)) is not None}

    @classmethod
    def from_http(cls, request: GenerateRequest, **resolved: Any) -> JobRequest:
        """The HTTP request's fields (``option`` becomes ``preset``) with ``resolved`` values replacing them."""
        fields = request.model_dump()
        fields["preset"] = fields.pop("option")
        return cls.model_validate(fields | resolved)

    def pipeline_arguments(self) -> dict[str, Any]:
        """Keyword arguments of the pipeline's ``generate`` (besides progress/temp_dir/output_path)."""
        return {name: getattr(self, name) for name in type(self).model_fields if name not in self.SERVICE_FIELDS}

    def fingerprint(self) -> str:
        """Identity of the inputs, for request_id idempotency (same id + same fingerprint = same job).

        Fields left at None are not hashed (except the original four), so adding an optional field does not
        change the fingerprint of requests that do not use it, nor of jobs stored before it existed.
        """
        fields = self.model_dump(mode="json", exclude=set(self.SERVICE_FIELDS))
        fields["option"] = fields.pop("preset")  # the key the first schema hashed
        legacy = {"source_image", "driven_audio", "option", "landmarks"}
        canonical = {name: value for name, value in fields.items() if value is not None or name in legacy}
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


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
    worker: str | None = Field(default=None, description="The render worker (host:pid:id) holding a running job")
    queue_position: int | None = Field(default=None, description="1 = next to render (queued jobs only)")
    created_at: float
    started_at: float | None
    finished_at: float | None
    queued_seconds: float | None
    render_seconds: float | None


class WorkerInfo(BaseModel):
    """One render worker (of any process or server on the store) that announced itself recently."""

    worker: str  # owner id: host:pid:random
    device: str
    current_job: str | None
    started_at: float
    seen_seconds_ago: float


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
    worker: str = ""  # the worker of the process that answered
    workers: list[WorkerInfo] = []  # every live worker on the job store (all processes, all servers)
