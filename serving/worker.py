"""The render worker: ONE thread that owns the pipeline (and so the GPU) and renders jobs in order.

The queue is the job store itself (oldest `queued` row first), so a restart loses nothing. A claimed job is
leased to this worker (`owner`); a heartbeat thread renews the lease while the job renders, and every write
about the job is conditioned on still owning it. A job whose owner died (kill -9, crash, lost disk) is taken
back by whichever worker next sees its lease expired; a job whose owner is alive — another server on the
same state directory, or a worker process that outlived its `bentoml serve` — is never touched.

Store failures never strand a job: a failed progress write is logged and skipped; the final write (completed,
failed, requeued) is retried with backoff, and if it still cannot be made the lease simply expires and the
job is rendered again. A finished video is never deleted because bookkeeping failed.

Inputs are read through a snapshot taken right before rendering: each input file of the request
(`JobRequest.FILE_FIELDS`: the photo, the audio and any reference video) is opened, the opened descriptor's
real path is checked against the input roots, and its bytes are copied into the job's temp dir. A path
swapped for a symlink after acceptance therefore fails the job (input error) and nothing outside the roots
is read.

Shutdown is cooperative. `stop(grace)` stops taking new jobs and waits up to `grace` seconds for the
running one; after that it raises `JobInterrupted` from inside the pipeline's next progress callback,
which unwinds the render, and the job goes back to `queued` without counting as an attempt. The real
pipeline calls back between frames and between the enhancer's faces, so this takes one frame's time. If a
render does not reach a progress callback within `ABORT_WAIT_SECONDS` anyway, `stop` requeues the job itself
(the render thread is a daemon and dies with the process), so a graceful restart never counts as a crash.

`sadtalker_frames_rendered_total` counts the frames the pipeline reports written (`ProgressReport.frames_written`)
as the reports arrive: a render that fails or is interrupted counts exactly the frames it wrote.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import stat
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sadtalker.contracts import ProgressReport
from sadtalker.errors import InputError
from serving.joblog import job_context
from serving.metrics import JobMetrics
from serving.naming import partial_files
from serving.pipeline_factory import Pipeline
from serving.schema import JobRequest
from serving.store import JobRecord, JobState, JobStore, RecoveryReport

log = logging.getLogger("sadtalker.serving.worker")

# How long `stop` waits for an aborted render to unwind after the grace period (a frame, or one GFPGAN face).
ABORT_WAIT_SECONDS = 10.0
# The store is written at most this often for progress alone (stage changes are always written).
PROGRESS_WRITE_INTERVAL = 1.0
# A lease not renewed for this long means the owner is gone; the heartbeat renews it three times as often.
DEFAULT_LEASE_SECONDS = 30.0
# How long the final write of a job is retried (with backoff) before the lease is left to expire.
TERMINAL_WRITE_SECONDS = 60.0

#: Failure kinds a resubmission cannot fix: the inputs themselves are unusable (see `failure_kind`).
PERMANENT_KINDS = frozenset(
    {"input", "image", "no_face", "audio", "audio_too_short", "audio_too_long", "reference_video"}
)

_T = TypeVar("_T")


class JobInterrupted(Exception):
    """Raised inside the pipeline (via the progress callback) to abandon a render at shutdown."""


class LeaseLost(Exception):
    """Raised inside the pipeline when this worker no longer owns the job (its lease expired and was taken)."""


def failure_kind(exc: BaseException) -> str:
    """The failure label of an exception: its class's ``kind``; CUDA out-of-memory by type; else "internal"."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return "out_of_memory"
    kind = getattr(exc, "kind", None)
    return kind if isinstance(kind, str) and kind else "internal"


def failure_message(exc: BaseException) -> str:
    """What the client sees in `/status`: the input field for input errors, the error type otherwise."""
    if isinstance(exc, InputError):
        return f"{exc.field}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def escape(text: str) -> str:
    """``text`` with control characters escaped as repr() does (a newline in a file name cannot forge log lines)."""
    return repr(text)[1:-1]


def traceback_text(exc: BaseException) -> str:
    """The traceback of ``exc`` for the log, its message escaped (it may quote user-supplied paths)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return f"Traceback (most recent call last):\n{frames}{name}: {escape(str(exc))}"


def retry_with_backoff(
    action: Callable[[], _T], what: str, *, deadline_seconds: float, first_delay: float = 0.2, max_delay: float = 5.0
) -> _T:
    """Run ``action`` until it succeeds or ``deadline_seconds`` passed (then re-raise its last error)."""
    give_up = time.monotonic() + deadline_seconds
    delay = first_delay
    while True:
        try:
            return action()
        except Exception as exc:
            if time.monotonic() + delay > give_up:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


class InputChanged(InputError):
    """An input file changed after acceptance so that it can no longer be used (a permanent failure, kind "input")."""


def snapshot_input(field: str, path: Path, roots: Sequence[Path], into: Path) -> Path:
    """Copy one input into ``into`` through a descriptor whose real path is checked against ``roots``.

    The check is made on the OPENED file (``/proc/self/fd``), so a symlink swapped in after acceptance can
    neither redirect the read outside the roots nor slip in between check and read.
    """
    try:
        # O_NONBLOCK: a FIFO swapped in must not block the worker; regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputChanged(f"{path!s} can no longer be read ({exc.strerror or exc})", field=field) from None
    with os.fdopen(fd, "rb") as source:
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not any(real.is_relative_to(root) for root in roots):
            raise InputChanged(
                f"{path!s} now resolves to {str(real)!r}, outside the allowed input directories", field=field
            )
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputChanged(f"{path!s} is no longer a regular file", field=field)
        into.mkdir(parents=True, exist_ok=True)
        target = into / path.name
        with open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, 1024 * 1024)
    return target


@dataclass
class _ProgressTracker:
    """The `progress(report)` callback given to the pipeline for one job: records progress, counts the frames
    written, and stops the render (by raising) at shutdown or when the lease was lost."""

    store: JobStore
    metrics: JobMetrics
    job_id: str
    owner: str
    abort: threading.Event
    lease_lost: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic
    preset: str = "crop"
    stage: str | None = None
    stage_started: float = 0.0
    written_percent: float = 0.0
    last_write: float = field(default=float("-inf"))
    frames_counted: int = 0

    def __call__(self, report: ProgressReport) -> None:
        # Frames first: they were written whatever happens next (a failed or interrupted render counts them too).
        new_frames = report.frames_written - self.frames_counted
        if new_frames > 0:
            self.metrics.frames_rendered.labels(preset=self.preset).inc(new_frames)
            self.frames_counted = report.frames_written
        if self.abort.is_set():
            raise JobInterrupted("service is shutting down")
        if self.lease_lost.is_set():
            raise LeaseLost("this worker's lease on the job expired and the job was taken back")
        stage = report.stage
        now = self.clock()
        # The contract: a fraction of the whole job in [0, 1].
        percent = min(max(float(report.fraction), 0.0), 1.0) * 100.0
        changed = stage != self.stage
        if changed:
            self._close_stage(now)
            self.stage, self.stage_started = stage, now
            log.info("stage %s", stage)
        # Stage changes are always written; mere progress at most once per interval and per whole percent.
        due = abs(percent - self.written_percent) >= 1.0 and now - self.last_write >= PROGRESS_WRITE_INTERVAL
        if changed or due:
            try:
                self.store.set_progress(self.job_id, self.owner, stage, round(percent, 1))
            except Exception as exc:  # progress is informative: a failed write must not fail the render
                log.warning("progress write skipped (%s: %s)", type(exc).__name__, exc)
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


def new_owner_id() -> str:
    """Unique per worker: host and pid say whose it is in `/jobs` and logs; the random part keeps it unique."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RenderWorker:
    """Renders queued jobs one at a time on a daemon thread (or synchronously via `process_one`)."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: JobStore,
        metrics: JobMetrics,
        *,
        temp_root: Path,
        input_roots: Sequence[Path],
        output_dir: Path | None = None,
        max_attempts: int = 3,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        terminal_write_seconds: float = TERMINAL_WRITE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        device: str = "cpu",
    ) -> None:
        self._pipeline = pipeline
        self.device = device
        self._store = store
        self._metrics = metrics
        self._temp_root = Path(temp_root)
        self._input_roots = tuple(Path(os.path.realpath(root)) for root in input_roots)
        self._output_dir = output_dir
        self._max_attempts = max_attempts
        self._lease_seconds = lease_seconds
        self._terminal_write_seconds = terminal_write_seconds
        self._clock = clock
        self.owner = new_owner_id()
        self._wake = threading.Condition()
        self._pending = False
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: JobRecord | None = None
        # Issue 15 hook: called with the final record of every job that ENDED completed or failed (written by this
        # worker as the lease owner, or abandoned by lease recovery); NOT for a job requeued, taken back by another
        # worker, or whose final write never landed: those render again and need their inputs. The service deletes
        # the job's uploaded inputs here (serving/uploads.py).
        self.on_job_finished: Callable[[JobRecord], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Take back jobs whose owner is gone and delete their leftovers; leave live owners' files alone."""
        report = self._requeue_expired()
        self._temp_root.mkdir(parents=True, exist_ok=True)
        live = self._store.live_job_ids()
        for leftover in self._temp_root.iterdir():
            if leftover.name in live:
                continue  # another live worker's job (a second server on this state dir, or an orphan)
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        self.update_queue_gauge()
        return report

    def _requeue_expired(self) -> RecoveryReport:
        report = self._store.recover(self._max_attempts)
        # A process killed mid-encode leaves the pipeline's partial file next to the output; the job will be
        # rendered again (or is failed for good), so its partial file is garbage either way.
        for job_id in (*report.requeued, *report.abandoned):
            job = self._store.get(job_id)
            if job is not None:
                self._remove_partials(job)
        for job_id in report.requeued:
            log.warning("job=%s: its worker's lease expired (shutdown/crash/kill): queued again", job_id)
        for job_id in report.abandoned:
            log.error("job=%s was interrupted %d times: marked failed, not retried", job_id, self._max_attempts)
            job = self._store.get(job_id)
            if job is not None:
                self._job_finished(job)
        return report

    @staticmethod
    def _remove_partials(job: JobRecord) -> None:
        for leftover in partial_files(job.output_path):
            log.warning("job=%s removing partial output %r", job.id, str(leftover))
            leftover.unlink(missing_ok=True)

    def start(self) -> None:
        """Start the render thread (call `recover` first, once, before any job is claimed)."""
        # Daemon: if a render ignores the abort past the grace period, the process can still exit;
        # `stop` has requeued its job.
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
            current = self._current
            if current is not None:
                # The render did not reach a stop check in time. Requeue it now, as a graceful interruption (not a
                # crash attempt); the daemon thread dies with the process, and its late writes are refused because
                # this worker no longer owns the job.
                log.error("render thread did not stop within %gs: requeueing job=%s", ABORT_WAIT_SECONDS, current.id)
                with contextlib.suppress(Exception):
                    self._store.requeue(current.id, self.owner, "interrupted by shutdown; waiting for restart")
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

    def announce(self) -> None:
        """Tell the store this worker is alive, on which device, rendering what (read by /system_info)."""
        try:
            self._store.announce_worker(self.owner, self.device, self.current_job_id)
        except Exception as exc:  # informative only: a failed announcement must not stop rendering
            log.warning("worker announcement skipped (%s: %s)", type(exc).__name__, exc)

    def update_queue_gauge(self) -> int:
        depth = self._store.count(JobState.QUEUED)
        self._metrics.queue_depth.set(depth)
        return depth

    # -- rendering --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        log.info("render worker %s started on %s", self.owner, self.device)
        while not self._stopping.is_set():
            with self._wake:
                # Cleared BEFORE looking at the queue: a notify() from now on makes us look again.
                self._pending = False
            self.announce()
            try:
                record = self.process_one()
            except Exception:  # the store failed (disk full, ...): log, back off, keep serving
                log.exception("render worker: unexpected error outside a job; retrying in 5 s")
                self._stopping.wait(5.0)
                continue
            if record is None:
                with self._wake:
                    if not self._pending and not self._stopping.is_set():
                        # Also the pace at which expired leases of other workers are noticed.
                        self._wake.wait(timeout=min(5.0, self._lease_seconds))
        with contextlib.suppress(Exception):
            self._store.forget_worker(self.owner)
        log.info("render worker stopped")

    def process_one(self) -> JobRecord | None:
        """Claim and render the oldest queued job; return its final record (None if the queue was empty)."""
        if self._stopping.is_set() and self._thread is not None:
            return None
        self._requeue_expired()
        job = self._store.claim_next(self.owner, self._lease_seconds, self._output_dir)
        if job is None:
            return None
        self._current = job
        try:
            self.announce()
            self.update_queue_gauge()
            with job_context(job.id, job.request_id):
                ended = self._render(job)
                record = self._store.get(job.id)
                if ended and record is not None:
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

    @contextlib.contextmanager
    def _heartbeat(self, job: JobRecord, lost: threading.Event) -> Iterator[None]:
        """Renew the job's lease every third of its duration until the block ends."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self._lease_seconds / 3):
                self.announce()
                try:
                    if not self._store.renew_lease(job.id, self.owner, self._lease_seconds):
                        log.error("job=%s lease lost: another worker took the job back; abandoning", job.id)
                        lost.set()
                        return
                except Exception as exc:  # the store is briefly unwritable: keep trying until the lease runs out
                    log.warning("job=%s lease renewal failed (%s: %s)", job.id, type(exc).__name__, exc)

        thread = threading.Thread(target=beat, name=f"sadtalker-lease-{job.id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _render(self, job: JobRecord) -> bool:
        """Render one claimed job; True if it ENDED here (completed or failed, recorded by this worker as owner),
        False if it was requeued, taken back by another worker, or its final write never landed."""
        temp_dir = self._temp_root / job.id
        shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.mkdir(parents=True)
        lost = threading.Event()
        request = job.request
        tracker = _ProgressTracker(
            self._store,
            self._metrics,
            job.id,
            self.owner,
            self._abort,
            lease_lost=lost,
            clock=self._clock,
            preset=request.preset,
        )
        started = self._clock()
        log.info("rendering %s -> %r (attempt %d)", _describe(request), str(job.output_path), job.attempts)
        try:
            with self._heartbeat(job, lost):
                self._render_files(job, request, tracker, temp_dir)
        except JobInterrupted:
            tracker.finish()
            log.warning("interrupted by shutdown: queued again for the next start")
            reason = "interrupted by shutdown; waiting for restart"
            self._final_write(job, "requeue", lambda: self._store.requeue(job.id, self.owner, reason))
            return False
        except LeaseLost:
            tracker.finish()
            return False  # the job is another worker's now: no write, and its output path is theirs
        except Exception as exc:
            tracker.finish()
            kind = failure_kind(exc)
            if kind in PERMANENT_KINDS:  # the inputs' fault: one line, like a 4xx
                log.warning("failed (%s): %s", kind, escape(failure_message(exc)))
            else:
                log.error("failed (%s): %s\n%s", kind, escape(failure_message(exc)), traceback_text(exc))
            if job.output_path.exists():
                # The name belongs to this job alone; a file there now is from a render we report as failed.
                log.warning("removing %r written by the failed render", str(job.output_path))
                job.output_path.unlink(missing_ok=True)
            if kind == "out_of_memory":
                _release_cached_gpu_memory()
            preset = request.preset
            self._metrics.failed.labels(preset=preset, kind=kind).inc()
            self._metrics.job_seconds.labels(preset=preset, outcome="failed").observe(self._clock() - started)
            message = failure_message(exc)
            return self._final_write(job, "fail", lambda: self._store.fail(job.id, self.owner, message, kind))
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
            self._remove_partials(job)  # the pipeline cleans up after itself; this covers it if it did not
            with contextlib.suppress(Exception):
                self.update_queue_gauge()
        tracker.finish()
        elapsed = self._clock() - started
        self._metrics.completed.labels(preset=request.preset).inc()
        self._metrics.job_seconds.labels(preset=request.preset, outcome="completed").observe(elapsed)
        log.info("completed in %.1fs: %r", elapsed, str(job.output_path))
        # The video is in place whatever happens to this write: a bookkeeping failure never deletes it.
        return self._final_write(job, "complete", lambda: self._store.complete(job.id, self.owner))

    def _render_files(self, job: JobRecord, request: JobRequest, tracker: _ProgressTracker, temp_dir: Path) -> None:
        """Snapshot the inputs, run the pipeline, check its output exists."""
        inputs = temp_dir / "inputs"
        arguments = request.pipeline_arguments()
        # Every input FILE the request names (JobRequest.FILE_FIELDS), required or optional, is read through the
        # same checked snapshot; the pipeline only ever sees the copies.
        for name, path in request.input_files().items():
            arguments[name] = snapshot_input(name, Path(path), self._input_roots, inputs / name)
        source_image = arguments.pop("source_image")
        driven_audio = arguments.pop("driven_audio")
        with _inference_mode():
            written = self._pipeline.generate(
                source_image,
                driven_audio,
                job.output_path,
                progress=tracker,
                temp_dir=temp_dir,
                **arguments,
            )
        if not job.output_path.is_file():
            raise RuntimeError(f"the pipeline returned {written} but {job.output_path} does not exist")

    def _final_write(self, job: JobRecord, what: str, write: Callable[[], bool]) -> bool:
        """The job's last write, retried; if it never lands the lease expires and the job is rendered again.

        True if it landed on a job this worker still owned.
        """
        try:
            owned = retry_with_backoff(write, f"{what} write", deadline_seconds=self._terminal_write_seconds)
        except Exception:
            log.error(
                "could not record the job as %s: it stays running until its lease expires, then is rendered again",
                what,
                exc_info=True,
            )
            return False
        if not owned:
            log.error("could not record the job as %s: this worker no longer owns it", what)
        return bool(owned)


def _describe(request: JobRequest) -> str:
    """The request for a log line; user strings repr-escaped (a newline in a file name cannot forge lines)."""
    fields = request.model_dump(exclude={"landmarks", "request_id"}, exclude_none=True)
    text = " ".join(f"{name}={value!r}" for name, value in fields.items())
    return text + (" landmarks=given" if request.landmarks is not None else "")
