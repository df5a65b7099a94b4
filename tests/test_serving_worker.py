"""The render worker with a fake pipeline: order, failures, temp dirs, shutdown, metrics."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sadtalker.contracts import ProgressReport
from sadtalker.errors import NoFaceError
from serving.metrics import JobMetrics
from serving.schema import JobRequest
from serving.store import JobState, SqliteJobStore
from serving.worker import RenderWorker
from tests.fakes import FakePipeline


class Harness:
    def __init__(self, tmp_path: Path, pipeline: FakePipeline) -> None:
        self.tmp = tmp_path
        self.out = tmp_path / "out"
        self.out.mkdir(parents=True)
        self.registry = CollectorRegistry()
        self.metrics = JobMetrics.create(self.registry)
        self.store = SqliteJobStore(tmp_path / "state" / "jobs.sqlite3")
        self.temp_root = tmp_path / "state" / "tmp"
        self.inputs = tmp_path / "inputs"
        self.inputs.mkdir()
        (self.inputs / "speech.wav").write_bytes(b"audio bytes")
        self.pipeline = pipeline
        self.worker = self.make_worker(pipeline)
        self._n = 0

    def make_worker(self, pipeline: FakePipeline, **options: object) -> RenderWorker:
        return RenderWorker(
            pipeline,
            self.store,
            self.metrics,
            temp_root=self.temp_root,
            input_roots=[self.inputs],
            **options,  # type: ignore[arg-type]
        )

    def submit(self, name: str = "face.png", preset: str = "crop", seconds: float = 2.0, **extra: object) -> str:
        self._n += 1
        image = self.inputs / name
        if not image.exists():
            image.write_bytes(f"image {name}".encode())
        job = JobRequest(
            source_image=str(image),
            driven_audio=str(self.inputs / "speech.wav"),
            preset=preset,  # type: ignore[arg-type]
            audio_seconds=seconds,
            **extra,  # type: ignore[arg-type]
        )
        return self.store.insert(job, self.out / f"video{self._n}.mp4").id

    def value(self, name: str, **labels: str) -> float:
        # Render-side metrics carry the worker's index (0 here); the others have no worker label.
        found = self.registry.get_sample_value(name, labels | {"worker": "0"})
        return found if found is not None else self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path, FakePipeline(render_seconds=0.0, ticks=4))


def test_jobs_render_in_submission_order(harness: Harness) -> None:
    ids = [harness.submit(preset=preset) for preset in ("crop", "full", "crop")]
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
    assert seen == [("starting", 0.0), ("inputs", 0.0), ("face", 25.0), ("motion", 50.0)]
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
    message = record.getMessage()
    assert message.startswith("failed (render): RenderError: fake failure") and "Traceback" in message
    assert "in generate" in message  # the frames of the traceback
    completed = harness.worker.process_one()
    assert completed is not None and completed.id == good and completed.state is JobState.COMPLETED
    assert not (harness.out / "video1.mp4").exists() and (harness.out / "video2.mp4").is_file()


def test_failure_log_escapes_user_strings(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    class Quoting(FakePipeline):  # an error message that quotes the input path as is
        def generate(self, source_image: object, *args: object, **kwargs: object) -> Path:
            raise RuntimeError(f"cannot decode {Path(str(source_image)).name}")

    harness.worker = harness.make_worker(Quoting())
    harness.submit(name="evil\n2026-01-01 [ERROR] forged.png")
    harness.worker.process_one()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "forged" in text and not any(line.startswith("2026-01-01") for line in text.splitlines())


def test_input_errors_name_the_field(harness: Harness) -> None:
    class NoFace(FakePipeline):
        def generate(self, *args: object, **kwargs: object) -> Path:
            raise NoFaceError("face.png: no face found in the image")

    harness.worker = harness.make_worker(NoFace())
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
    # The pipeline reads snapshots of the inputs inside the job's temp dir, with the client's bytes.
    assert all(call["source_image"].is_relative_to(call["temp_dir"]) for call in harness.pipeline.calls)
    assert harness.pipeline.calls[0]["inputs"] == (b"image face.png", b"audio bytes")
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

    harness.worker = harness.make_worker(Lazy())
    harness.submit()
    job = harness.worker.process_one()
    assert job is not None and job.state is JobState.FAILED and "does not exist" in (job.error or "")


def test_request_fields_reach_the_pipeline_as_stored(harness: Harness) -> None:
    points = tuple((float(i), float(2 * i)) for i in range(68))
    harness.submit(landmarks=points, preset="full")
    harness.worker.process_one()
    call = harness.pipeline.calls[0]
    # The pipeline converts landmarks itself (np.asarray); the worker passes the request's fields unchanged.
    assert call["landmarks"] == points and call["preset"] == "full"
    assert "request_id" not in call and "audio_seconds" not in call  # service bookkeeping stays in the service


def test_metrics_move(harness: Harness) -> None:
    harness.pipeline.frames = 20  # per video; the failing one fails at tick 2 of 4, after writing 20 * 2 // 4
    harness.submit(seconds=2.0)
    harness.submit(preset="full", seconds=1.0)
    harness.submit(name="fail.png")
    harness.worker.update_queue_gauge()
    assert harness.value("sadtalker_queue_depth") == 3
    for _ in range(3):
        harness.worker.process_one()
    assert harness.value("sadtalker_queue_depth") == 0
    assert harness.value("sadtalker_jobs_completed_total", preset="crop") == 1
    assert harness.value("sadtalker_jobs_completed_total", preset="full") == 1
    assert harness.value("sadtalker_jobs_failed_total", preset="crop", kind="render") == 1
    # Frames as the pipeline wrote them (not audio seconds x 25): the failed render counts its 10 frames.
    assert harness.value("sadtalker_frames_rendered_total", preset="crop") == 20 + 10
    assert harness.value("sadtalker_frames_rendered_total", preset="full") == 20
    assert harness.value("sadtalker_job_seconds_count", preset="crop", outcome="completed") == 1
    assert harness.value("sadtalker_job_seconds_bucket", preset="crop", outcome="completed", le="3600.0") == 1
    assert harness.value("sadtalker_stage_seconds_count", stage="render") == 2  # the failed job stopped before it


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
    first.store.claim_next("killed-worker", 0.0)  # "running" when the process was killed; lease long expired
    stale = first.temp_root / job_id
    (stale / "frames").mkdir(parents=True)
    first.store.close()

    # The next process: same state dir, new store connection, new worker.
    store = SqliteJobStore(tmp_path / "state" / "jobs.sqlite3")
    metrics = JobMetrics.create(CollectorRegistry())
    worker = RenderWorker(
        FakePipeline(render_seconds=0.0), store, metrics, temp_root=first.temp_root, input_roots=[first.inputs]
    )
    report = worker.recover()
    assert report.requeued == (job_id,)
    assert not stale.exists()
    done = worker.process_one()
    assert done is not None and done.id == job_id and done.state is JobState.COMPLETED and done.attempts == 2


def test_second_worker_leaves_a_live_job_and_its_files_alone(harness: Harness) -> None:
    """Two workers on one state dir (a second server, or an orphan): never two renders, never each other's files."""
    harness.pipeline.render_seconds = 1.5
    harness.pipeline.ticks = 15
    started = threading.Event()
    harness.pipeline.on_tick = lambda tick: started.set()
    busy = harness.submit()
    first = harness.make_worker(harness.pipeline, lease_seconds=0.6)  # heartbeat every 0.2 s
    thread = threading.Thread(target=first.process_one)
    thread.start()
    assert started.wait(5)
    second_pipeline = FakePipeline(render_seconds=0.0)
    second = harness.make_worker(second_pipeline, lease_seconds=0.6)
    time.sleep(1.0)  # longer than the lease: only the heartbeat keeps it
    report = second.recover()
    assert report.requeued == () and (harness.temp_root / busy).is_dir()  # the live job's temp dir survives
    assert second.process_one() is None  # nothing to claim: the job is leased
    thread.join(10)
    record = harness.store.get(busy)
    assert record is not None and record.state is JobState.COMPLETED and record.attempts == 1
    assert len(harness.pipeline.calls) == 1 and second_pipeline.calls == []


def test_input_swapped_for_a_symlink_after_acceptance_fails_the_job(harness: Harness, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(b"not yours")
    job_id = harness.submit(name="face.png")
    (harness.inputs / "face.png").unlink()
    (harness.inputs / "face.png").symlink_to(secret)  # swapped after "1" was answered
    job = harness.worker.process_one()
    assert job is not None and job.id == job_id and job.state is JobState.FAILED and job.error_kind == "input"
    assert job.error is not None and job.error.startswith("source_image: ") and "outside the allowed" in job.error
    assert harness.pipeline.calls == []  # nothing outside the roots was handed to the pipeline


class FlakyStore(SqliteJobStore):
    """A real store whose writes fail like a full disk while `full` is set."""

    full = False
    fail_writes: frozenset[str] = frozenset({"set_progress", "complete", "fail", "requeue", "renew_lease"})

    def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
        attribute = super().__getattribute__(name)
        if name in type(self).fail_writes and super().__getattribute__("full"):

            def refuse(*args: object, **kwargs: object) -> object:
                raise sqlite3.OperationalError("database or disk is full")

            return refuse
        return attribute


def test_store_full_during_render_never_strands_the_job(harness: Harness, tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "flaky.sqlite3")
    harness.store = store
    worker = harness.make_worker(harness.pipeline, terminal_write_seconds=1.0, lease_seconds=1.0)
    job_id = harness.submit()
    harness.pipeline.on_tick = lambda tick: setattr(store, "full", tick >= 1)  # the disk fills mid-render
    worker.process_one()
    output = harness.out / "video1.mp4"
    record = store.get(job_id)
    # The render finished and its video stays; the final write could not be made, so the job is still running
    # under a lease nobody renews ...
    assert output.is_file() and record is not None and record.state is JobState.RUNNING
    store.full = False  # space is freed
    time.sleep(1.1)
    # ... and once the lease expires, the next look at the queue takes it back and renders it again.
    harness.pipeline.on_tick = None
    again = worker.process_one()
    assert again is not None and again.id == job_id and again.state is JobState.COMPLETED and again.attempts == 2
    assert output.is_file()


def test_failed_final_write_is_retried_until_it_lands(harness: Harness, tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "flaky.sqlite3")
    harness.store = store
    worker = harness.make_worker(harness.pipeline, terminal_write_seconds=5.0)
    job_id = harness.submit()
    harness.pipeline.on_tick = lambda tick: setattr(store, "full", True)
    threading.Timer(0.5, lambda: setattr(store, "full", False)).start()  # the disk recovers during the retries
    worker.process_one()
    record = store.get(job_id)
    assert record is not None and record.state is JobState.COMPLETED and (harness.out / "video1.mp4").is_file()


def test_shutdown_requeues_a_render_that_never_checks_in(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline that checks in less often than the abort wait: the restart still is no crash attempt."""
    import serving.worker as worker_module

    monkeypatch.setattr(worker_module, "ABORT_WAIT_SECONDS", 0.3)
    release = threading.Event()
    started = threading.Event()

    def stuck(tick: int) -> None:
        started.set()
        release.wait(10)  # one long batch without a progress callback

    harness.pipeline.on_tick = stuck
    job_id = harness.submit()
    harness.worker.start()
    assert started.wait(5)
    assert not harness.worker.stop(grace=0.1)  # the thread is still inside the batch ...
    record = harness.store.get(job_id)
    assert record is not None and record.state is JobState.QUEUED and record.attempts == 0  # ... but the job is back
    release.set()
    time.sleep(0.5)
    record = harness.store.get(job_id)
    assert record is not None and record.state is JobState.QUEUED  # the late render's writes were refused


class FramePipeline(FakePipeline):
    """Renders in batches of `batch_frames` frames that take longer than the abort wait, but reports progress
    after every frame (`frame_seconds`), as the real pipeline now does; records how its render ended."""

    batch_frames: int = 5
    frame_seconds: float = 0.2
    batches: int = 20

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(render_seconds=0.0)
        self.fail_after = fail_after
        self.written = 0
        self.first_frame = threading.Event()
        self.ended_by: BaseException | None = None

    def generate(self, source_image: object, driven_audio: object, output_path: object, **kwargs: object) -> Path:
        progress = kwargs["progress"]
        total = self.batches * self.batch_frames
        output = Path(str(output_path))
        partial = output.with_name(f".{output.stem}.0000.partial")
        partial.write_bytes(b"frames so far")
        try:
            for _batch in range(self.batches):
                for _frame in range(self.batch_frames):
                    time.sleep(self.frame_seconds)
                    self.written += 1
                    progress(ProgressReport("render", self.written / total, self.written, total))  # type: ignore[operator]
                    self.first_frame.set()
                    if self.written == self.fail_after:
                        raise RuntimeError(f"failed after {self.written} frames")
        except BaseException as exc:
            self.ended_by = exc
            partial.unlink()
            raise
        partial.rename(output)
        return output


def test_shutdown_interrupts_between_frames_of_a_batch_longer_than_the_abort_wait(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch (1 s) takes longer than the abort wait (0.5 s), but the pipeline checks in per frame (0.2 s): the
    render unwinds by itself (JobInterrupted) within the wait, instead of being abandoned to the fallback."""
    import serving.worker as worker_module
    from serving.worker import JobInterrupted

    monkeypatch.setattr(worker_module, "ABORT_WAIT_SECONDS", 0.5)
    pipeline = FramePipeline()
    harness.worker = harness.make_worker(pipeline)
    job_id = harness.submit()
    harness.worker.start()
    assert pipeline.first_frame.wait(5)
    assert harness.worker.stop(grace=0.1)  # the render thread ended: no daemon thread left inside a batch
    assert isinstance(pipeline.ended_by, JobInterrupted)
    assert 1 <= pipeline.written < pipeline.batch_frames * pipeline.batches
    assert "interrupted by shutdown: queued again for the next start" in caplog.text
    assert "did not stop within" not in caplog.text  # not the abort-wait fallback
    record = harness.store.get(job_id)
    assert record is not None and record.state is JobState.QUEUED and record.attempts == 0
    # The frames it wrote before the stop are counted, exactly (the stop is raised after counting them).
    assert harness.value("sadtalker_frames_rendered_total", preset="crop") == pipeline.written
    assert harness.value("sadtalker_jobs_failed_total", preset="crop", kind="internal") == 0
    assert list(harness.out.iterdir()) == [] and list(harness.temp_root.iterdir()) == []


def test_failed_render_counts_exactly_the_frames_it_wrote(harness: Harness) -> None:
    pipeline = FramePipeline(fail_after=7)
    pipeline.frame_seconds = 0.0
    harness.worker = harness.make_worker(pipeline)
    harness.submit(preset="full", seconds=30.0)  # 750 frames' worth of audio: not what the counter counts
    job = harness.worker.process_one()
    assert job is not None and job.state is JobState.FAILED and "failed after 7 frames" in (job.error or "")
    assert harness.value("sadtalker_frames_rendered_total", preset="full") == 7
    assert harness.value("sadtalker_jobs_failed_total", preset="full", kind="internal") == 1
    assert list(harness.out.iterdir()) == []


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
    harness.store.claim_next("me", 30.0)
    now = [0.0]
    tracker = _ProgressTracker(harness.store, harness.metrics, job_id, "me", threading.Event(), clock=lambda: now[0])
    tracker(ProgressReport("render", 0.0))
    for step in range(1, 41):  # 0.5 % every 0.1 s: small steps must still add up
        now[0] += 0.1
        tracker(ProgressReport("render", step * 0.005))
    record = harness.store.get(job_id)
    # Written at most once per second: the record lags by at most one second of progress (5 % here).
    assert record is not None and record.stage == "render" and 15.0 <= record.progress <= 20.0
    tracker(ProgressReport("encode", 2.0))  # stage change: written at once; the fraction is clamped to the whole job
    assert harness.store.get(job_id).progress == 100.0  # type: ignore[union-attr]
    tracker.finish()
    assert harness.value("sadtalker_stage_seconds_count", stage="render") == 1
    assert harness.value("sadtalker_stage_seconds_sum", stage="render") == pytest.approx(4.0)


def test_failed_progress_write_is_skipped(harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from serving.worker import _ProgressTracker

    store = FlakyStore(tmp_path / "flaky.sqlite3")
    job = store.insert(JobRequest(source_image="/i.png", driven_audio="/a.wav", preset="crop"), tmp_path / "v.mp4")
    store.claim_next("me", 30.0)
    store.full = True
    tracker = _ProgressTracker(store, harness.metrics, job.id, "me", threading.Event())
    tracker(ProgressReport("render", 0.5))  # does not raise
    assert "progress write skipped" in caplog.text


def test_failed_render_leaves_no_file_at_the_output_path(harness: Harness) -> None:
    class WritesThenFails(FakePipeline):
        def generate(self, source_image: object, driven_audio: object, output_path: object, **kwargs: object) -> Path:
            Path(str(output_path)).write_bytes(b"half a video")
            raise RuntimeError("encoder crashed after writing")

    harness.worker = harness.make_worker(WritesThenFails())
    harness.submit()
    job = harness.worker.process_one()
    assert job is not None and job.state is JobState.FAILED and job.error_kind == "internal"
    assert list(harness.out.iterdir()) == []


def test_recover_removes_partial_outputs_of_interrupted_jobs(harness: Harness) -> None:
    interrupted = harness.submit()
    harness.store.claim_next("killed", 0.0)  # killed mid-encode: its partial file is left in the output dir
    record = harness.store.get(interrupted)
    assert record is not None
    partial = record.output_path.with_name(f".{record.output_path.stem}.deadbeef.partial")
    partial.write_bytes(b"truncated")
    unrelated = harness.out / "someone_elses.mp4"
    unrelated.write_bytes(b"keep me")
    harness.worker.recover()
    assert not partial.exists() and unrelated.exists()
