"""The render worker: ONE thread that owns the pipeline (and so the GPU) and renders jobs in order.

The queue is the job store itself (oldest `queued` row first), so a restart loses nothing: jobs left
`running` by a killed process are put back by `JobStore.recover` before the thread starts.

Shutdown is cooperative. `stop(grace)` stops taking new jobs and waits up to `grace` seconds for the
running one; after that it raises `JobInterrupted` from inside the pipeline's next progress callback,
which unwinds the render (the pipeline only renames its output into place when complete, and the
worker deletes the job's temp dir), and the job goes back to `queued` for the next start.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.config import FPS
from serving.joblog import job_context
from serving.metrics import JobMetrics
from serving.naming import partial_files
from serving.pipeline import Pipeline
from serving.store import JobRecord, JobState, JobStore, RecoveryReport

log = logging.getLogger("sadtalker.serving.worker")

# How long `stop` waits for an aborted render to unwind after the grace period (one progress tick).
ABORT_WAIT_SECONDS = 10.0
# The store is written at most this often for progress alone (stage changes are always written).
PROGRESS_WRITE_INTERVAL = 1.0


class JobInterrupted(Exception):
    """Raised inside the pipeline (via the progress callback) to abandon a render at shutdown."""


def failure_kind(exc: BaseException) -> str:
    """A small fixed set of labels for the failed-jobs metric (bounded cardinality)."""
    from sadtalker.errors import AudioError, ImageError, InputError, NoFaceError, RenderError
    from sadtalker.weights import CheckpointError

    for kind, types in (
        ("no_face", (NoFaceError,)),
        ("image", (ImageError,)),
        ("audio", (AudioError,)),
        ("input", (InputError,)),
        ("render", (RenderError,)),
        ("checkpoint", (CheckpointError,)),
    ):
        if isinstance(exc, types):
            return kind
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
        return "out_of_memory"
    return "internal"


def failure_message(exc: BaseException) -> str:
    """What the client sees in `/status`: the input field for input errors, the error type otherwise."""
    from sadtalker.errors import InputError

    if isinstance(exc, InputError):
        return f"{exc.field}: {exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _ProgressTracker:
    """The `progress(stage, fraction)` callback given to the pipeline for one job."""

    store: JobStore
    metrics: JobMetrics
    job_id: str
    abort: threading.Event
    clock: Callable[[], float] = time.monotonic
    stage: str | None = None
    stage_started: float = 0.0
    written_percent: float = 0.0
    last_write: float = field(default=float("-inf"))

    def __call__(self, stage: str, fraction: float) -> None:
        if self.abort.is_set():
            raise JobInterrupted("service is shutting down")
        now = self.clock()
        # The contract is a fraction of the whole job in [0, 1]; values above 1 are taken as percent.
        percent = float(fraction) if fraction > 1.0 else float(fraction) * 100.0
        percent = min(max(percent, 0.0), 100.0)
        changed = stage != self.stage
        if changed:
            self._close_stage(now)
            self.stage, self.stage_started = stage, now
            log.info("stage %s", stage)
        # Stage changes are always written; mere progress at most once per interval and per whole percent.
        due = abs(percent - self.written_percent) >= 1.0 and now - self.last_write >= PROGRESS_WRITE_INTERVAL
        if changed or due:
            self.store.set_progress(self.job_id, stage, round(percent, 1))
            self.written_percent, self.last_write = percent, now

    def _close_stage(self, now: float) -> None:
        if self.stage is not None:
            self.metrics.stage_seconds.labels(stage=self.stage).observe(now - self.stage_started)

    def finish(self) -> None:
        self._close_stage(self.clock())
        self.stage = None


def _inference_mode() -> contextlib.AbstractContextManager[object]:
    """torch.inference_mode() for the render thread (grad mode is per thread; the pipeline may set it too)."""
    import torch

    return torch.inference_mode()


def _release_cached_gpu_memory() -> None:
    """After a CUDA out-of-memory error, hand the allocator's cache back so the next job starts clean."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class RenderWorker:
    """Renders queued jobs one at a time on a daemon thread (or synchronously via `process_one`)."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: JobStore,
        metrics: JobMetrics,
        *,
        temp_root: Path,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pipeline = pipeline
        self._store = store
        self._metrics = metrics
        self._temp_root = Path(temp_root)
        self._max_attempts = max_attempts
        self._clock = clock
        self._wake = threading.Condition()
        self._pending = False
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: JobRecord | None = None
        # Issue 15 hook: called with the final record of every job that ended completed or failed (NOT for one
        # requeued by shutdown); the service deletes the job's uploaded inputs here (serving/uploads.py).
        self.on_job_finished: Callable[[JobRecord], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Clean up after a previous process: stale temp dirs, interrupted jobs back to the queue."""
        if self._temp_root.exists():
            for leftover in self._temp_root.iterdir():
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        self._temp_root.mkdir(parents=True, exist_ok=True)
        report = self._store.recover(self._max_attempts)
        # A process killed mid-encode leaves the pipeline's partial mp4 next to the output; the job will be
        # rendered again (or is failed for good), so its partial file is garbage either way.
        for job in [*self._store.queued(), *filter(None, map(self._store.get, report.abandoned))]:
            self._remove_partials(job)
        for job_id in report.requeued:
            log.warning("job=%s was interrupted by a previous shutdown/crash: queued again", job_id)
        for job_id in report.abandoned:
            log.error("job=%s was interrupted %d times: marked failed, not retried", job_id, self._max_attempts)
        self.update_queue_gauge()
        return report

    @staticmethod
    def _remove_partials(job: JobRecord) -> None:
        for leftover in partial_files(job.output_path):
            log.warning("job=%s removing partial output %s", job.id, leftover)
            leftover.unlink(missing_ok=True)

    def start(self) -> None:
        """Start the render thread (call `recover` first, once, before any job is claimed)."""
        # Daemon: if a render ignores the abort past the grace period, the process can still exit;
        # the job, left `running`, is requeued by the next start.
        self._thread = threading.Thread(target=self._run, name="sadtalker-render", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Wake the thread: a job was queued (or stop was requested)."""
        with self._wake:
            self._pending = True
            self._wake.notify_all()

    def stop(self, grace: float) -> bool:
        """Take no new job; wait ``grace`` s for the running one, then abort it. True if the thread ended."""
        self._stopping.set()
        self.notify()
        thread = self._thread
        if thread is None:
            return True
        thread.join(grace)
        if thread.is_alive():
            current = self._current
            log.warning(
                "shutdown grace of %gs is over: interrupting job=%s (it stays queued for the next start)",
                grace,
                current.id if current else "-",
            )
            self._abort.set()
            thread.join(ABORT_WAIT_SECONDS)
        if thread.is_alive():
            log.error("render thread did not stop; its job will be requeued at the next start")
        return not thread.is_alive()

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def current_job_id(self) -> str | None:
        current = self._current
        return None if current is None else current.id

    def update_queue_gauge(self) -> int:
        depth = self._store.count(JobState.QUEUED)
        self._metrics.queue_depth.set(depth)
        return depth

    # -- rendering --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        log.info("render worker started")
        while not self._stopping.is_set():
            with self._wake:
                # Cleared BEFORE looking at the queue: a notify() from now on makes us look again.
                self._pending = False
            try:
                record = self.process_one()
            except Exception:  # the store failed (disk full, ...): log, back off, keep serving
                log.exception("render worker: unexpected error outside a job; retrying in 5 s")
                self._stopping.wait(5.0)
                continue
            if record is None:
                with self._wake:
                    if not self._pending and not self._stopping.is_set():
                        # The timeout is only a safety net; notify() is what wakes us.
                        self._wake.wait(timeout=5.0)
        log.info("render worker stopped")

    def process_one(self) -> JobRecord | None:
        """Claim and render the oldest queued job; return its final record (None if the queue was empty)."""
        if self._stopping.is_set() and self._thread is not None:
            return None
        job = self._store.claim_next()
        if job is None:
            return None
        self._current = job
        try:
            self.update_queue_gauge()
            with job_context(job.id, job.request_id):
                record = self._render(job)
                self._job_finished(record)
                return record
        finally:
            self._current = None

    def _job_finished(self, record: JobRecord) -> None:
        """Issue 15 hook (see `on_job_finished`); a failing hook is logged and never fails the job."""
        if self.on_job_finished is None or record.state not in (JobState.COMPLETED, JobState.FAILED):
            return
        try:
            self.on_job_finished(record)
        except Exception:
            log.exception("job-finished hook failed (the job itself is %s)", record.state)

    def _render(self, job: JobRecord) -> JobRecord:
        temp_dir = self._temp_root / job.id
        shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.mkdir(parents=True)
        tracker = _ProgressTracker(self._store, self._metrics, job.id, self._abort, clock=self._clock)
        landmarks = None if job.landmarks is None else np.asarray(job.landmarks, dtype=np.float32)
        started = self._clock()
        log.info(
            "rendering option=%s image=%s audio=%s -> %s (attempt %d)",
            job.option,
            job.source_image,
            job.driven_audio,
            job.output_path,
            job.attempts,
        )
        try:
            with _inference_mode():
                written = self._pipeline.generate(
                    job.source_image,
                    job.driven_audio,
                    job.output_path,
                    preset=job.option,
                    landmarks=landmarks,
                    progress=tracker,
                    temp_dir=temp_dir,
                )
            if not job.output_path.is_file():
                raise RuntimeError(f"the pipeline returned {written} but {job.output_path} does not exist")
        except JobInterrupted:
            tracker.finish()
            log.warning("interrupted by shutdown: queued again for the next start")
            return self._store.requeue(job.id, "interrupted by shutdown; waiting for restart")
        except Exception as exc:
            tracker.finish()
            kind = failure_kind(exc)
            log.exception("failed (%s): %s", kind, failure_message(exc))
            if job.output_path.exists():
                # The name belongs to this job alone; a file there now is from a render we report as failed.
                log.warning("removing %s written by the failed render", job.output_path)
                job.output_path.unlink(missing_ok=True)
            if kind == "out_of_memory":
                _release_cached_gpu_memory()
            record = self._store.fail(job.id, failure_message(exc), kind)
            self._metrics.failed.labels(preset=job.option, kind=kind).inc()
            self._metrics.job_seconds.labels(preset=job.option, outcome="failed").observe(self._clock() - started)
            return record
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
            self.update_queue_gauge()
            self._remove_partials(job)  # the pipeline cleans up after itself; this covers it if it did not
        tracker.finish()
        elapsed = self._clock() - started
        record = self._store.complete(job.id)
        self._metrics.completed.labels(preset=job.option).inc()
        self._metrics.job_seconds.labels(preset=job.option, outcome="completed").observe(elapsed)
        if job.audio_seconds is not None:
            # SadTalker renders one frame per 640 samples of 16 kHz audio, i.e. floor(25 * seconds).
            self._metrics.frames_rendered.labels(preset=job.option).inc(int(job.audio_seconds * FPS))
        log.info("completed in %.1fs: %s", elapsed, job.output_path)
        return record
