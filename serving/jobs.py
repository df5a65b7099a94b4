"""Job submission and lookup: the service's logic without any BentoML in it.

`submit` is what `/generate` does: idempotency by request_id, validation, the queue bound, the
durable insert, and waking the worker. The HTTP layer (service.py) only maps its exceptions to status
codes: RequestInvalid -> 400, RequestConflict -> 409, QueueFull -> 429 + Retry-After,
NotAccepting and StoreFull -> 503.

Resubmitting a request_id: same inputs and the job is queued, running or completed -> the same job
(nothing new); failed for a transient reason (interrupted, out of memory, internal, render...) -> the
same job queued again as a new attempt; failed for a permanent reason (its inputs: no face, unreadable
image or audio) -> 409 naming the failure. Other inputs -> 409.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

from serving.config import ServingConfig
from serving.metrics import JobMetrics
from serving.naming import allocate_output_path
from serving.schema import GenerateRequest, JobRequest, JobStatus
from serving.store import (
    DuplicateOutputPath,
    DuplicateRequestId,
    JobRecord,
    JobState,
    JobStore,
    QueueAtCapacity,
    StoreFull,
    StoreUnavailable,
    is_disk_full,
    is_store_unreachable,
)
from serving.validation import RequestValidator, fingerprint_of
from serving.worker import PERMANENT_KINDS, RenderWorker

log = logging.getLogger("sadtalker.serving.jobs")

DEFAULT_RETRY_AFTER = 30
MAX_RETRY_AFTER = 3600
# Output names drawn per submission when concurrent servers keep taking the one just drawn (never in practice).
OUTPUT_NAME_ATTEMPTS = 5


class QueueFull(Exception):
    def __init__(self, depth: int, retry_after: int) -> None:
        super().__init__(f"render queue is full ({depth} jobs waiting); retry in about {retry_after} s")
        self.depth = depth
        self.retry_after = retry_after


class RequestConflict(Exception):
    """The request_id is already used by a job with different inputs (HTTP 409)."""


class NotAccepting(Exception):
    """The service is shutting down (HTTP 503)."""


class JobNotFound(LookupError):
    """`/status` of an unknown request_id or job id (HTTP 404)."""


@dataclass(frozen=True)
class Submission:
    job: JobRecord
    duplicate: bool  # True: an earlier request with this request_id and the same inputs; nothing new queued


class JobService:
    def __init__(
        self,
        config: ServingConfig,
        store: JobStore,
        worker: RenderWorker,
        metrics: JobMetrics,
        validator: RequestValidator,
    ) -> None:
        self._config = config
        self._store = store
        self._worker = worker
        self._metrics = metrics
        self._validator = validator

    def submit(self, request: GenerateRequest, *, validator: RequestValidator | None = None) -> Submission:
        """Validate and durably queue a request.

        ``validator``: instead of the service's own (uploads, issue 15: their files lie in the upload spool, an
        input root for them only). Raises RequestInvalid, RequestConflict, QueueFull, NotAccepting or StoreFull.
        """
        if self._worker.stopping:
            raise NotAccepting("the service is shutting down; retry on another replica or after restart")
        try:
            return self._submit(request, validator or self._validator)
        except Exception as exc:
            if is_disk_full(exc):
                log.error("cannot record a new job: the job database is not writable (%s)", exc)
                raise StoreFull(
                    f"the service cannot record new jobs: its state disk is full or read-only ({exc}); retry later"
                ) from exc
            if is_store_unreachable(exc):
                log.error("cannot record a new job: the job database cannot be reached (%s)", exc)
                raise StoreFull(f"the service cannot reach its job database ({exc}); retry later") from exc
            raise

    def _submit(self, request: GenerateRequest, validator: RequestValidator) -> Submission:
        # Idempotency first: a retried request must get the same answer even if the queue filled up since.
        if request.request_id is not None:
            existing = self._store.get_by_request_id(request.request_id)
            if existing is not None:
                return self._resubmission(existing, fingerprint_of(request))
        job_request = validator.validate(request)
        try:
            job = self._insert(job_request)
        except QueueAtCapacity as exc:
            raise QueueFull(exc.depth, self.retry_after()) from None
        except DuplicateRequestId:
            # Another thread or server inserted the same request_id between our lookup and insert.
            existing = self._store.get_by_request_id(job_request.request_id or "")
            assert existing is not None
            return self._resubmission(existing, job_request.fingerprint())
        self._queued(job)
        log.info(
            "job=%s accepted request_id=%r preset=%s image=%r audio=%r (%.2fs) -> %r",
            job.id,
            job.request_id,
            job_request.preset,
            job_request.source_image,
            job_request.driven_audio,
            job_request.audio_seconds or 0.0,
            str(job.output_path),
        )
        return Submission(job=job, duplicate=False)

    def _insert(self, job_request: JobRequest) -> JobRecord:
        """Insert with a fresh output name; a name another server took between our check and our insert (its
        UNIQUE constraint refuses the second) is replaced by a new one, a bounded number of times."""
        for attempt in range(1, OUTPUT_NAME_ATTEMPTS + 1):
            output = allocate_output_path(self._config.output_dir, is_reserved=self._store.is_output_reserved)
            try:
                # The store counts and inserts in one atomic step, for every server on it: the bound is global.
                return self._store.insert(job_request, output, max_queue=self._config.max_queue)
            except DuplicateOutputPath:
                log.warning("output name %r was taken concurrently (try %d): picking another", output.name, attempt)
        raise RuntimeError(f"no free output name in {self._config.output_dir} after {OUTPUT_NAME_ATTEMPTS} tries")

    def _queued(self, job: JobRecord) -> None:
        self._metrics.accepted.labels(preset=job.request.preset).inc()
        self._worker.update_queue_gauge()
        self._worker.notify()

    def _resubmission(self, existing: JobRecord, fingerprint: str) -> Submission:
        if existing.fingerprint != fingerprint:
            raise RequestConflict(
                f"request_id {existing.request_id!r} was already used for different inputs "
                f"(job {existing.id}, {existing.state}); use a new request_id"
            )
        if existing.state is not JobState.FAILED:
            log.info("job=%s duplicate submission of request_id=%r ignored", existing.id, existing.request_id)
            return Submission(job=existing, duplicate=True)
        if existing.error_kind in PERMANENT_KINDS:
            raise RequestConflict(
                f"request_id {existing.request_id!r} failed for good (job {existing.id}, {existing.error_kind}: "
                f"{existing.error}); fix the input and submit it with a new request_id"
            )
        try:
            retried = self._store.retry(existing.id, max_queue=self._config.max_queue)
        except QueueAtCapacity as exc:
            raise QueueFull(exc.depth, self.retry_after()) from None
        if retried is None:  # a concurrent resubmission requeued it first
            retried = self._store.get(existing.id)
            assert retried is not None
            return Submission(job=retried, duplicate=True)
        log.info(
            "job=%s request_id=%r resubmitted after a %s failure: queued again",
            existing.id,
            existing.request_id,
            existing.error_kind,
        )
        self._queued(retried)
        return Submission(job=retried, duplicate=False)

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: about one job's duration."""
        mean = self._store.mean_job_seconds()
        if mean is None:
            return DEFAULT_RETRY_AFTER
        return int(min(max(math.ceil(mean), 1), MAX_RETRY_AFTER))

    def status(self, *, request_id: str | None = None, job_id: str | None = None) -> JobStatus:
        """One job by the client's request_id OR by the server's job id (two namespaces, never mixed)."""
        if (request_id is None) == (job_id is None):
            raise ValueError("give exactly one of request_id and job_id")
        with _reading_store("a job's status"):
            return self._status(request_id, job_id)

    def _status(self, request_id: str | None, job_id: str | None) -> JobStatus:
        if request_id is not None:
            record = self._store.get_by_request_id(request_id)
            if record is None:
                raise JobNotFound(f"request_id: no job with request_id {request_id!r}")
        else:
            record = self._store.get(job_id or "")
            if record is None:
                raise JobNotFound(f"job_id: no job with id {job_id!r}")
        return self.to_status(record)

    def recent(self, limit: int) -> list[JobStatus]:
        with _reading_store("the recent jobs"):
            return [self.to_status(record) for record in self._store.recent(limit)]

    def to_status(self, record: JobRecord) -> JobStatus:
        position = self._store.queue_position(record.id) if record.state is JobState.QUEUED else None
        queued_seconds = None
        if record.started_at is not None:
            queued_seconds = record.started_at - record.created_at
        render_seconds = None
        if record.started_at is not None and record.finished_at is not None:
            render_seconds = record.finished_at - record.started_at
        return JobStatus(
            job_id=record.id,
            request_id=record.request_id,
            state=record.state.value,
            progress=record.progress,
            stage=record.stage,
            option=record.request.preset,
            source_image=record.request.source_image,
            driven_audio=record.request.driven_audio,
            output_path=str(record.output_path),
            error=record.error,
            error_kind=record.error_kind,
            attempts=record.attempts,
            worker=record.owner,
            queue_position=position,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            queued_seconds=queued_seconds,
            render_seconds=render_seconds,
        )


@contextlib.contextmanager
def _reading_store(what: str) -> Iterator[None]:
    """A read of the job database that cannot reach it becomes StoreUnavailable (503), not a bare 500."""
    try:
        yield
    except Exception as exc:
        if not is_store_unreachable(exc):
            raise
        log.error("cannot read %s: the job database cannot be reached (%s)", what, exc)
        raise StoreUnavailable(f"the service cannot reach its job database ({exc}); retry later") from exc
