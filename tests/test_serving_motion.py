"""Issue 14 on the service: motion controls as optional request fields of /generate and /generate_upload.

Schema and validation rules (real decoders, real tiny videos), the fields reaching the pipeline through the real
store and worker (reference videos as the worker's temp-dir copies), the symlink-swap protection for reference
videos, a reference-video failure being permanent, and an upload with a reference video through the real route.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydantic
import pytest
from prometheus_client import CollectorRegistry
from test_serving_validation import make_config, write_png, write_wav

from sadtalker.errors import ReferenceVideoError
from serving.config import ServingConfig
from serving.jobs import RequestConflict
from serving.metrics import JobMetrics
from serving.runtime import Runtime
from serving.schema import GenerateRequest, JobRequest
from serving.store import JobState
from serving.validation import RequestInvalid, RequestValidator, fingerprint_of
from tests.fakes import FakePipeline

MOTION = {"input_yaw": [-30, 30], "input_pitch": [5.5], "input_roll": [0, 10, -10]}


def write_video(path: Path, frames: int = 5, size: tuple[int, int] = (64, 48), fps: int = 25) -> Path:
    """A real, tiny H.264 mp4 (frame i is a flat grey of level 40 * i)."""
    import imageio_ffmpeg

    width, height = size
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, macro_block_size=1, quality=5)
    writer.send(None)
    for index in range(frames):
        writer.send(np.full((height, width, 3), (40 * index) % 256, np.uint8).tobytes())
    writer.close()
    return path


@pytest.fixture
def config(tmp_path: Path) -> ServingConfig:
    config = make_config(tmp_path, allow_cpu=True)
    root = config.input_dirs[0]
    write_png(root / "face.png")
    write_wav(root / "speech.wav")
    write_video(root / "blink.mp4")
    write_video(root / "nod.mp4", frames=8)
    return config


def req(config: ServingConfig, **extra: object) -> GenerateRequest:
    root = config.input_dirs[0]
    fields = {"source_image": root / "face.png", "driven_audio": root / "speech.wav", "option": "crop"} | extra
    return GenerateRequest(**fields)  # type: ignore[arg-type]


def rejected(validator: RequestValidator, request: GenerateRequest) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as info:
        validator.validate(request)
    return info.value


def start(config: ServingConfig, pipeline: Any) -> Runtime:
    return Runtime.start(
        config,
        pipeline=pipeline,
        metrics=JobMetrics.create(CollectorRegistry()),
        start_worker=False,
        cuda_available=lambda: False,
    )


class RecordingPipeline(FakePipeline):
    """The fake, also keeping the bytes of the reference videos as they were during the render."""

    def generate(self, source_image: Any, driven_audio: Any, output_path: Any, **kwargs: Any) -> Path:
        self.videos = {
            name: (Path(kwargs[name]), Path(kwargs[name]).read_bytes())
            for name in ("ref_eyeblink", "ref_pose")
            if kwargs.get(name) is not None
        }
        return super().generate(source_image, driven_audio, output_path, **kwargs)


# -- schema ------------------------------------------------------------------------------------------------------


def test_schema_takes_the_motion_fields_and_keeps_them_optional() -> None:
    plain = GenerateRequest(source_image="/a.png", driven_audio="/b.wav", option="full")
    assert (plain.ref_eyeblink, plain.ref_pose, plain.input_yaw, plain.input_pitch, plain.input_roll) == (None,) * 5
    full = GenerateRequest(
        source_image="/a.png", driven_audio="/b.wav", option="crop", ref_eyeblink=Path("/in/e.mp4"),
        ref_pose="/in/p.mp4", **MOTION,
    )  # fmt: skip
    assert full.ref_eyeblink == "/in/e.mp4" and full.input_yaw == [-30.0, 30.0] and full.input_roll == [0, 10, -10]
    job = JobRequest.from_http(full)
    assert job.input_yaw == (-30.0, 30.0) and job.input_pitch == (5.5,)
    assert job.input_files() == {
        "source_image": "/a.png", "driven_audio": "/b.wav", "ref_eyeblink": "/in/e.mp4", "ref_pose": "/in/p.mp4"
    }  # fmt: skip
    assert set(job.pipeline_arguments()) >= {"ref_eyeblink", "ref_pose", "input_yaw", "input_pitch", "input_roll"}
    assert "preprocess" not in GenerateRequest.model_fields  # the preset switch stays `option`


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        ({"input_yaw": []}, "input_yaw", "at least 1"),
        ({"input_yaw": ["10"]}, "input_yaw", "valid number"),  # strict: JSON numbers only
        ({"input_pitch": [True]}, "input_pitch", "valid number"),
        ({"input_pitch": 10}, "input_pitch", "valid list"),  # a list, as in the README
        ({"input_roll": [float("nan")]}, "input_roll", "must hold numbers"),  # GenerateOptions' rule
        ({"input_roll": [181]}, "input_roll", "must lie in [-180, 180]"),  # GenerateOptions' rule
        ({"input_yaw": [0] * 257}, "input_yaw", "1 to 256 angles"),  # GenerateOptions' rule
        ({"ref_pose": ""}, "ref_pose", "at least 1"),
        ({"ref_eyeblink": 5}, "ref_eyeblink", "valid string"),
        ({"preprocess": "extcrop"}, "preprocess", "Extra inputs"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(extra: dict, field: str, says: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        GenerateRequest(source_image="/a.png", driven_audio="/b.wav", option="crop", **extra)
    error = info.value.errors()[0]
    assert error["loc"][0] == field and says in error["msg"], error


def test_fingerprint_ignores_absent_motion_fields_and_tells_present_ones_apart() -> None:
    base = {"source_image": "/a.png", "driven_audio": "/b.wav", "preset": "crop"}
    legacy = JobRequest.model_validate(base).fingerprint()
    # The three-field request hashes exactly the keys the first schema hashed.
    import hashlib
    import json

    first_schema = {"source_image": "/a.png", "driven_audio": "/b.wav", "option": "crop", "landmarks": None}
    text = json.dumps(first_schema, sort_keys=True, separators=(",", ":"))
    assert legacy == hashlib.sha256(text.encode()).hexdigest()
    with_yaw = JobRequest.model_validate(base | {"input_yaw": (10.0,)}).fingerprint()
    with_pose = JobRequest.model_validate(base | {"ref_pose": "/p.mp4"}).fingerprint()
    assert len({legacy, with_yaw, with_pose}) == 3


# -- validation --------------------------------------------------------------------------------------------------


def test_valid_reference_videos_are_resolved_and_kept(config: ServingConfig) -> None:
    root = config.input_dirs[0]
    (root / "link.mp4").symlink_to(root / "nod.mp4")  # a symlink inside the roots is resolved
    request = req(config, ref_eyeblink=str(root / "sub" / ".." / "blink.mp4"), ref_pose=root / "link.mp4", **MOTION)
    job = RequestValidator(config).validate(request)
    assert job.ref_eyeblink == str(root / "blink.mp4") and job.ref_pose == str(root / "nod.mp4")
    assert job.input_yaw == (-30.0, 30.0) and job.input_roll == (0.0, 10.0, -10.0)
    assert fingerprint_of(request) == job.fingerprint()


def test_three_field_request_stores_no_motion_values(config: ServingConfig) -> None:
    job = RequestValidator(config).validate(req(config))
    assert {name: getattr(job, name) for name in ("ref_eyeblink", "ref_pose", "input_yaw")} == dict.fromkeys(
        ("ref_eyeblink", "ref_pose", "input_yaw")
    )


@pytest.mark.parametrize("field", ["ref_eyeblink", "ref_pose"])
def test_reference_video_problems_name_the_field(config: ServingConfig, tmp_path: Path, field: str) -> None:
    root = config.input_dirs[0]
    validator = RequestValidator(config)
    outside = write_video(tmp_path / "outside.mp4")
    assert rejected(validator, req(config, **{field: outside})).field == field
    missing = rejected(validator, req(config, **{field: root / "gone.mp4"}))
    assert missing.field == field and "not found" in missing.reason
    # Audio only: no video stream. (A still image is accepted: ffmpeg reads it as a one-frame video.)
    not_video = rejected(validator, req(config, **{field: root / "speech.wav"}))
    assert not_video.field == field and "not a readable video" in not_video.reason, not_video
    (root / "noise.mp4").write_bytes(b"\x00garbage" * 100)
    garbage = rejected(validator, req(config, **{field: root / "noise.mp4"}))
    assert garbage.field == field and "not a readable video" in garbage.reason
    assert str(garbage).startswith(f"{field}: ") and not garbage.reason.startswith(f"{field}:")


def test_reference_video_caps_come_from_the_config(tmp_path: Path, config: ServingConfig) -> None:
    root = config.input_dirs[0]
    size = (root / "nod.mp4").stat().st_size
    small = make_config(tmp_path, max_video_bytes=size - 1)
    too_big = rejected(RequestValidator(small), req(config, ref_pose=root / "nod.mp4"))
    assert too_big.field == "ref_pose" and f"limit is {size - 1:,} bytes" in too_big.reason
    short = make_config(tmp_path, max_video_seconds=0.1)  # nod.mp4 lasts 8 frames = 0.32 s
    too_long = rejected(RequestValidator(short), req(config, ref_eyeblink=root / "nod.mp4"))
    assert too_long.field == "ref_eyeblink" and "limit of 0.1 s" in too_long.reason
    write_video(root / "wide.mp4", frames=2, size=(160, 96))  # more pixels than the 48x64 photo
    few_pixels = make_config(tmp_path, max_image_pixels=160 * 96 - 1)
    big_frames = rejected(RequestValidator(few_pixels), req(config, ref_pose=root / "wide.mp4"))
    assert big_frames.field == "ref_pose" and "160x96" in big_frames.reason


def test_config_reads_the_video_caps() -> None:
    env = {"SADTALKER_MAX_VIDEO_BYTES": "1234", "SADTALKER_MAX_VIDEO_SECONDS": "12.5"}
    config = ServingConfig.from_env(env)
    assert (config.max_video_bytes, config.max_video_seconds) == (1234, 12.5)
    assert ServingConfig.from_env({}).max_video_bytes == 100 * 1024 * 1024


# -- through the real store and worker ---------------------------------------------------------------------------


def test_motion_fields_reach_the_pipeline_and_videos_arrive_as_temp_copies(config: ServingConfig) -> None:
    root = config.input_dirs[0]
    pipeline = RecordingPipeline(render_seconds=0.0, ticks=2)
    runtime = start(config, pipeline)
    runtime.jobs.submit(req(config, ref_eyeblink=root / "blink.mp4", ref_pose=root / "nod.mp4", **MOTION))
    job = runtime.worker.process_one()
    assert job is not None and job.state is JobState.COMPLETED, job
    (call,) = pipeline.calls
    assert (call["input_yaw"], call["input_pitch"], call["input_roll"]) == ((-30.0, 30.0), (5.5,), (0.0, 10.0, -10.0))
    assert call["preset"] == "crop"
    temp_dir = Path(call["temp_dir"])
    for name, original in (("ref_eyeblink", "blink.mp4"), ("ref_pose", "nod.mp4")):
        copy, data = pipeline.videos[name]
        assert copy.is_relative_to(temp_dir) and copy.name == original  # the snapshot, not the client's path
        assert data == (root / original).read_bytes()
        assert Path(call[name]) == copy
    # The stored request (one JSON column) still names the client's files.
    assert runtime.store.get(job.id).request.ref_pose == str(root / "nod.mp4")  # type: ignore[union-attr]


def test_reference_video_swapped_for_a_symlink_after_acceptance_fails_the_job(
    config: ServingConfig, tmp_path: Path
) -> None:
    root = config.input_dirs[0]
    (tmp_path / "outside").mkdir()
    secret = write_video(tmp_path / "outside" / "secret.mp4")
    pipeline = FakePipeline(render_seconds=0.0, ticks=2)
    runtime = start(config, pipeline)
    runtime.jobs.submit(req(config, ref_pose=root / "nod.mp4"))
    (root / "nod.mp4").unlink()
    (root / "nod.mp4").symlink_to(secret)  # swapped after "1" was answered
    job = runtime.worker.process_one()
    assert job is not None and job.state is JobState.FAILED and job.error_kind == "input"
    assert job.error is not None and job.error.startswith("ref_pose: ") and "outside the allowed" in job.error
    assert pipeline.calls == []  # nothing outside the roots was handed to the pipeline


class ReferenceFailingPipeline(FakePipeline):
    def generate(self, *args: Any, **kwargs: Any) -> Path:
        raise ReferenceVideoError("ref_eyeblink: blink.mp4: no face in its first frame", field="ref_eyeblink")


def test_reference_video_failure_is_permanent(config: ServingConfig) -> None:
    root = config.input_dirs[0]
    runtime = start(config, ReferenceFailingPipeline(render_seconds=0.0))
    runtime.jobs.submit(req(config, request_id="ref-1", ref_eyeblink=root / "blink.mp4"))
    job = runtime.worker.process_one()
    assert job is not None and job.state is JobState.FAILED and job.error_kind == "reference_video"
    with pytest.raises(RequestConflict, match="failed for good .*reference_video: ref_eyeblink: "):
        runtime.jobs.submit(req(config, request_id="ref-1", ref_eyeblink=root / "blink.mp4"))
    assert runtime.store.count(JobState.QUEUED) == 0


def test_every_pipeline_argument_of_the_request_is_a_parameter_of_the_real_pipeline() -> None:
    from sadtalker.pipeline import SadTalker

    parameters = inspect.signature(SadTalker.generate).parameters
    fields = JobRequest(source_image="/a", driven_audio="/b", preset="crop").pipeline_arguments()
    assert set(fields) - set(parameters) == set()


def test_the_pipeline_applies_keyword_controls_on_top_of_the_preset() -> None:
    from sadtalker.pipeline import resolve_options

    plain = resolve_options("full", None, size=512, controls=dict.fromkeys(("ref_pose", "input_yaw")))
    assert plain == resolve_options("full", None, size=512)  # absent controls change nothing
    options = resolve_options(
        "full", None, size=512, controls={"ref_pose": "/tmp/job/nod.mp4", "input_yaw": (-30.0, 30.0)}
    )
    assert (options.preprocess, options.still, options.size) == ("full", True, 512)  # the preset is kept
    assert options.ref_pose == Path("/tmp/job/nod.mp4") and options.input_yaw == (-30.0, 30.0)
    assert options.ref_eyeblink is None and options.input_pitch is None
    with pytest.raises(ValueError, match="input_roll angles must lie in"):
        resolve_options("crop", None, controls={"input_roll": (500.0,)})


# -- /generate_upload --------------------------------------------------------------------------------------------


def test_upload_with_a_reference_video_and_angles(config: ServingConfig) -> None:
    from starlette.testclient import TestClient

    from serving.webapp import WebContext, WebSettings, create_app

    root = config.input_dirs[0]
    web = WebContext.create(config, WebSettings())
    pipeline = RecordingPipeline(render_seconds=0.0, ticks=2)
    runtime = Runtime.start(
        config, pipeline=pipeline, metrics=JobMetrics.create(CollectorRegistry()), start_worker=False,
        cuda_available=lambda: False, extra_input_roots=web.extra_input_roots,
    )  # fmt: skip
    web.attach(runtime)
    client = TestClient(create_app(lambda: web))

    def post(data: dict[str, str], videos: dict[str, str]) -> httpx.Response:
        files = {"source_image": ("face.png", (root / "face.png").read_bytes()),
                 "driven_audio": ("speech.wav", (root / "speech.wav").read_bytes())}  # fmt: skip
        files |= {name: (file, (root / file).read_bytes()) for name, file in videos.items()}
        return client.post("/generate_upload", data={"option": "crop", **data}, files=files)

    bad = post({"input_yaw": "[-30, 30"}, {})
    assert bad.status_code == 400 and bad.json()["field"] == "input_yaw", bad.text
    out_of_range = post({"input_roll": "[400]"}, {})
    assert out_of_range.status_code == 400 and out_of_range.json()["field"] == "input_roll", out_of_range.text
    not_video = post({}, {"ref_pose": "speech.wav"})
    assert not_video.status_code == 400 and not_video.json()["field"] == "ref_pose", not_video.text

    answer = post({"request_id": "up-motion", "input_yaw": "[-30, 30]", "input_pitch": "[5]"}, {"ref_pose": "nod.mp4"})
    assert (answer.status_code, answer.text) == (200, "1"), answer.text
    job = runtime.worker.process_one()
    assert job is not None and job.state is JobState.COMPLETED, job
    (call,) = pipeline.calls
    assert call["input_yaw"] == (-30.0, 30.0) and call["input_pitch"] == (5.0,) and call["ref_eyeblink"] is None
    copy, data = pipeline.videos["ref_pose"]
    assert data == (root / "nod.mp4").read_bytes() and copy.is_relative_to(Path(call["temp_dir"]))
    spooled = Path(job.request.ref_pose or "")
    assert spooled.parent.parent == config.state_dir / "uploads" and spooled.name == "ref_pose.mp4"
    assert not spooled.parent.exists()  # released with the job, reference video included
    assert sorted(p.name for p in (config.state_dir / "uploads").iterdir()) == []  # refused uploads left nothing
