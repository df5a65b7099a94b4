"""The render worker with a fake pipeline: order, failures, temp dirs, shutdown, metrics."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sadtalker.errors import NoFaceError
from serving.fake_pipeline import FakePipeline
from serving.metrics import JobMetrics
from serving.store import JobState, JobStore, NewJob
from serving.worker import RenderWorker


class Harness:
    def __init__(self, tmp_path: Path, pipeline: FakePipeline) -> None:
        self.tmp = tmp_path
        self.out = tmp_path / "out"
        self.out.mkdir(parents=True)
        self.registry = CollectorRegistry()
        self.metrics = JobMetrics.create(self.registry)
        self.store = JobStore(tmp_path / "state" / "jobs.sqlite3")
        self.temp_root = tmp_path / "state" / "tmp"
        self.pipeline = pipeline
        self.worker = RenderWorker(pipeline, self.store, self.metrics, temp_root=self.temp_root)
        self._n = 0

    def submit(self, name: str = "face.png", option: str = "crop", seconds: float = 2.0, **extra: object) -> str:
        self._n += 1
        job = NewJob(
            request_id=None,
            fingerprint=str(self._n),
            source_image=self.tmp / name,
            driven_audio=self.tmp / "speech.wav",
            option=option,
            output_path=self.out / f"video{self._n}.mp4",
            audio_seconds=seconds,
            **extra,  # type: ignore[arg-type]
        )
        return self.store.insert(job).id

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path, FakePipeline(render_seconds=0.0, ticks=4))


def test_jobs_render_in_submission_order(harness: Harness) -> None:
    ids = [harness.submit(option=option) for option in ("crop", "full", "crop")]
    finished = [harness.worker.process_one() for _ in ids]
    assert [job.id for job in finished if job] == ids
    assert [call["output_path"].name for call in harness.pipeline.calls] == ["video1.mp4", "video2.mp4", "video3.mp4"]
    assert [call["preset"] for call in harness.pipeline.calls] == ["crop", "full", "crop"]
    assert all(job is not None and job.state is JobState.COMPLETED for job in finished)
    assert sorted(p.name for p in harness.out.iterdir()) == ["video1.mp4", "video2.mp4", "video3.mp4"]
    assert harness.worker.process_one() is None


def test_progress_and_stage_are_recorded(harness: Harness) -> None:
    seen: list[tuple[str | None, float]] = []
    job_id = harness.submit()

    def snapshot(tick: int) -> None:
        record = harness.store.get(job_id)
        assert record is not None and record.state is JobState.RUNNING
        seen.append((record.stage, record.progress))

    harness.pipeline.on_tick = snapshot
    harness.worker.process_one()
    # Each snapshot is taken just before the pipeline's next report: it shows the previous one.
    assert seen == [("starting", 0.0), ("preprocess", 0.0), ("audio2coeff", 25.0), ("render", 50.0)]
    assert harness.store.get(job_id).progress == 100.0  # type: ignore[union-attr]


def test_failure_is_recorded_and_next_job_still_runs(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    bad = harness.submit(name="please_fail.png")
    good = harness.submit()
    failed = harness.worker.process_one()
    assert failed is not None and failed.id == bad
    assert failed.state is JobState.FAILED and failed.error_kind == "render"
    assert failed.error is not None and "RenderError: fake failure" in failed.error
    # The cause goes to the log with its traceback.
    record = next(r for r in caplog.records if r.levelname == "ERROR")
    assert record.exc_info is not None and "failed (render): RenderError: fake failure" in record.getMessage()
    completed = harness.worker.process_one()
    assert completed is not None and completed.id == good and completed.state is JobState.COMPLETED
    assert not (harness.out / "video1.mp4").exists() and (harness.out / "video2.mp4").is_file()


def test_input_errors_name_the_field(harness: Harness) -> None:
    class NoFace(FakePipeline):
        def generate(self, *args: object, **kwargs: object) -> Path:
            raise NoFaceError("face.png: no face found in the image")

    harness.worker = RenderWorker(NoFace(), harness.store, harness.metrics, temp_root=harness.temp_root)
    harness.submit()
    job = harness.worker.process_one()
    assert job is not None and job.state is JobState.FAILED
    assert (job.error_kind, job.error) == ("no_face", "source_image: face.png: no face found in the image")
    assert harness.value("sadtalker_jobs_failed_total", preset="crop", kind="no_face") == 1


def test_temp_dir_is_removed_after_success_and_failure(harness: Harness) -> None:
    harness.submit()
    harness.submit(name="fail_me.png")
    harness.worker.process_one()
    harness.worker.process_one()
    temp_dirs = [call["temp_dir"] for call in harness.pipeline.calls]
    assert all(d is not None and d.parent == harness.temp_root for d in temp_dirs)
    assert len(set(temp_dirs)) == 2
    assert not any(d.exists() for d in temp_dirs)
    assert list(harness.temp_root.iterdir()) == []


def test_no_partial_output_after_failure(harness: Harness) -> None:
    harness.submit(name="fail.png")
    harness.worker.process_one()
    assert list(harness.out.iterdir()) == []


def test_pipeline_that_writes_nothing_fails_the_job(harness: Harness) -> None:
    class Lazy(FakePipeline):
        def generate(self, *args: object, **kwargs: object) -> Path:
            return Path("/nowhere.mp4")

    harness.worker = RenderWorker(Lazy(), harness.store, harness.metrics, temp_root=harness.temp_root)
    harness.submit()
    job = harness.worker.process_one()
    assert job is not None and job.state is JobState.FAILED and "does not exist" in (job.error or "")


def test_landmarks_reach_the_pipeline_as_array(harness: Harness) -> None:
    points = tuple((float(i), float(2 * i)) for i in range(68))
    harness.submit(landmarks=points)
    harness.worker.process_one()
    landmarks = harness.pipeline.calls[0]["landmarks"]
    assert landmarks.shape == (68, 2) and landmarks.dtype.name == "float32" and landmarks[3].tolist() == [3.0, 6.0]


def test_metrics_move(harness: Harness) -> None:
    harness.submit(seconds=2.0)
    harness.submit(option="full", seconds=1.0)
    harness.submit(name="fail.png")
    harness.worker.update_queue_gauge()
    assert harness.value("sadtalker_queue_depth") == 3
    for _ in range(3):
        harness.worker.process_one()
    assert harness.value("sadtalker_queue_depth") == 0
    assert harness.value("sadtalker_jobs_completed_total", preset="crop") == 1
    assert harness.value("sadtalker_jobs_completed_total", preset="full") == 1
    assert harness.value("sadtalker_jobs_failed_total", preset="crop", kind="render") == 1
    assert harness.value("sadtalker_frames_rendered_total", preset="crop") == 50  # 2 s at 25 fps
    assert harness.value("sadtalker_frames_rendered_total", preset="full") == 25
    assert harness.value("sadtalker_job_seconds_count", preset="crop", outcome="completed") == 1
    assert harness.value("sadtalker_job_seconds_bucket", preset="crop", outcome="completed", le="3600.0") == 1
    assert harness.value("sadtalker_stage_seconds_count", stage="render") == 3


def test_thread_renders_in_background_and_stops(harness: Harness) -> None:
    harness.pipeline.render_seconds = 0.05
    harness.worker.start()
    ids = [harness.submit() for _ in range(3)]
    harness.worker.notify()
    deadline = time.monotonic() + 10
    while harness.store.count(JobState.COMPLETED) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [harness.store.get(i).state for i in ids] == [JobState.COMPLETED] * 3  # type: ignore[union-attr]
    assert harness.worker.stop(grace=5) and not harness.worker.is_alive


def test_shutdown_waits_for_running_job_within_grace(harness: Harness) -> None:
    harness.pipeline.render_seconds = 0.5
    started = threading.Event()
    harness.pipeline.on_tick = lambda tick: started.set()
    running = harness.submit()
    waiting = harness.submit()
    harness.worker.start()
    assert started.wait(5)
    assert harness.worker.stop(grace=10)
    assert harness.store.get(running).state is JobState.COMPLETED  # type: ignore[union-attr]
    # The next job was not started: it stays queued (durably) for the next process.
    assert harness.store.get(waiting).state is JobState.QUEUED  # type: ignore[union-attr]


def test_shutdown_past_grace_interrupts_and_requeues(harness: Harness) -> None:
    harness.pipeline.render_seconds = 30.0  # far longer than the grace
    harness.pipeline.ticks = 300
    started = threading.Event()
    harness.pipeline.on_tick = lambda tick: started.set()
    job_id = harness.submit()
    harness.worker.start()
    assert started.wait(5)
    begin = time.monotonic()
    assert harness.worker.stop(grace=0.3)
    assert time.monotonic() - begin < 5
    record = harness.store.get(job_id)
    assert record is not None and record.state is JobState.QUEUED and record.attempts == 0
    assert list(harness.out.iterdir()) == [] and list(harness.temp_root.iterdir()) == []


def test_recover_cleans_stale_temp_dirs_and_requeues(tmp_path: Path) -> None:
    first = Harness(tmp_path, FakePipeline(render_seconds=0.0))
    job_id = first.submit()
    first.store.claim_next()  # "running" when the process was killed
    stale = first.temp_root / job_id
    (stale / "frames").mkdir(parents=True)
    first.store.close()

    # The next process: same state dir, new store connection, new worker.
    store = JobStore(tmp_path / "state" / "jobs.sqlite3")
    metrics = JobMetrics.create(CollectorRegistry())
    worker = RenderWorker(FakePipeline(render_seconds=0.0), store, metrics, temp_root=first.temp_root)
    report = worker.recover()
    assert report.requeued == (job_id,)
    assert not stale.exists()
    done = worker.process_one()
    assert done is not None and done.id == job_id and done.state is JobState.COMPLETED and done.attempts == 2


def test_job_id_on_every_log_line_of_a_job() -> None:
    import io
    import logging

    from serving.joblog import JobLogFilter, install_job_log_filter, job_context

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    parent = logging.getLogger("test_joblog_parent")
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    install_job_log_filter(parent)
    install_job_log_filter(parent)  # idempotent
    assert sum(isinstance(f, JobLogFilter) for f in handler.filters) == 1
    child = logging.getLogger("test_joblog_parent.pipeline")  # like sadtalker.pipeline, propagating
    child.info("outside")
    with job_context("abc123", "req-9"):
        child.info("decoding %s", "audio")
        parent.warning("stage render")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "outside",
        "job=abc123 request_id=req-9 decoding audio",
        "job=abc123 request_id=req-9 stage render",
    ]
    parent.removeHandler(handler)


def test_progress_writes_are_throttled_but_not_lost(harness: Harness) -> None:
    from serving.worker import _ProgressTracker

    job_id = harness.submit()
    harness.store.claim_next()
    now = [0.0]
    tracker = _ProgressTracker(harness.store, harness.metrics, job_id, threading.Event(), clock=lambda: now[0])
    tracker("render", 0.0)
    for step in range(1, 41):  # 0.5 % every 0.1 s: small steps must still add up
        now[0] += 0.1
        tracker("render", step * 0.005)
    record = harness.store.get(job_id)
    # Written at most once per second: the record lags by at most one second of progress (5 % here).
    assert record is not None and record.stage == "render" and 15.0 <= record.progress <= 20.0
    tracker("encode", 2.0)  # stage change: written at once; > 1 is read as percent
    assert harness.store.get(job_id).progress == 2.0  # type: ignore[union-attr]
    tracker.finish()
    assert harness.value("sadtalker_stage_seconds_count", stage="render") == 1
    assert harness.value("sadtalker_stage_seconds_sum", stage="render") == pytest.approx(4.0)


def test_failed_render_leaves_no_file_at_the_output_path(harness: Harness) -> None:
    class WritesThenFails(FakePipeline):
        def generate(self, source_image: object, driven_audio: object, output_path: object, **kwargs: object) -> Path:
            Path(str(output_path)).write_bytes(b"half a video")
            raise RuntimeError("encoder crashed after writing")

    harness.worker = RenderWorker(WritesThenFails(), harness.store, harness.metrics, temp_root=harness.temp_root)
    harness.submit()
    job = harness.worker.process_one()
    assert job is not None and job.state is JobState.FAILED and job.error_kind == "internal"
    assert list(harness.out.iterdir()) == []


def test_recover_removes_partial_outputs_of_interrupted_jobs(harness: Harness) -> None:
    interrupted = harness.submit()
    harness.store.claim_next()  # killed mid-encode: its partial mp4 is left in the output dir
    record = harness.store.get(interrupted)
    assert record is not None
    partial = record.output_path.with_name(f".{record.output_path.stem}.deadbeef.partial.mp4")
    partial.write_bytes(b"truncated")
    unrelated = harness.out / "someone_elses.mp4"
    unrelated.write_bytes(b"keep me")
    harness.worker.recover()
    assert not partial.exists() and unrelated.exists()
