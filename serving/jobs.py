"""Job submission and lookup: the service's logic without any BentoML in it.

`submit` is what `/generate` does: idempotency by request_id, validation, the queue bound, the
durable insert, and waking the worker. The HTTP layer (service.py) only maps its exceptions to status
codes: RequestInvalid -> 400, RequestConflict -> 409, QueueFull -> 429 + Retry-After,
NotAccepting -> 503.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from serving.config import ServingConfig
from serving.metrics import JobMetrics
from serving.naming import allocate_output_path
from serving.schema import GenerateRequest, JobStatus
from serving.store import DuplicateRequestId, JobRecord, JobState, JobStore, NewJob
from serving.validation import RequestValidator, fingerprint_of
from serving.worker import RenderWorker

log = logging.getLogger("sadtalker.serving.jobs")

DEFAULT_RETRY_AFTER = 30
MAX_RETRY_AFTER = 3600


class QueueFull(Exception):
    def __init__(self, depth: int, retry_after: int) -> None:
        super().__init__(f"render queue is full ({depth} jobs waiting); retry in about {retry_after} s")
        self.depth = depth
        self.retry_after = retry_after


class RequestConflict(Exception):
    """The request_id is already used by a job with different inputs (HTTP 409)."""


class NotAccepting(Exception):
    """The service is shutting down (HTTP 503)."""


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
        # Makes "count queued, then insert" atomic across request threads, so the bound is exact.
        self._admission = threading.Lock()

    def submit(self, request: GenerateRequest) -> Submission:
        """Validate and durably queue a request. Raises RequestInvalid/RequestConflict/QueueFull/NotAccepting."""
        if self._worker.stopping:
            raise NotAccepting("the service is shutting down; retry on another replica or after restart")
        # Idempotency first: a retried request must get the same answer even if the queue filled up since.
        if request.request_id is not None:
            existing = self._store.get_by_request_id(request.request_id)
            if existing is not None:
                return self._resubmission(existing, fingerprint_of(request))
        checked = self._validator.validate(request)
        with self._admission:
            depth = self._store.count(JobState.QUEUED)
            if depth >= self._config.max_queue:
                raise QueueFull(depth, self.retry_after())
            output = allocate_output_path(self._config.output_dir, is_reserved=self._store.is_output_reserved)
            new_job = NewJob(
                request_id=checked.request_id,
                fingerprint=checked.fingerprint,
                source_image=checked.source_image,
                driven_audio=checked.driven_audio,
                option=checked.option,
                output_path=output,
                landmarks=checked.landmarks,
                audio_seconds=checked.audio_seconds,
            )
            try:
                job = self._store.insert(new_job)
            except DuplicateRequestId:
                # Another thread inserted the same request_id between our lookup and insert.
                existing = self._store.get_by_request_id(new_job.request_id or "")
                assert existing is not None
                return self._resubmission(existing, checked.fingerprint)
        self._metrics.accepted.labels(preset=job.option).inc()
        self._worker.update_queue_gauge()
        self._worker.notify()
        log.info(
            "job=%s accepted request_id=%s option=%s image=%s audio=%s (%.2fs) -> %s",
            job.id,
            job.request_id,
            job.option,
            job.source_image,
            job.driven_audio,
            checked.audio_seconds,
            job.output_path,
        )
        return Submission(job=job, duplicate=False)

    def _resubmission(self, existing: JobRecord, fingerprint: str) -> Submission:
        if existing.fingerprint != fingerprint:
            raise RequestConflict(
                f"request_id {existing.request_id!r} was already used for different inputs "
                f"(job {existing.id}, {existing.state}); use a new request_id"
            )
        log.info("job=%s duplicate submission of request_id=%s ignored", existing.id, existing.request_id)
        return Submission(job=existing, duplicate=True)

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: about one job's duration."""
        mean = self._store.mean_job_seconds()
        if mean is None:
            return DEFAULT_RETRY_AFTER
        return int(min(max(math.ceil(mean), 1), MAX_RETRY_AFTER))

    def status(self, key: str) -> JobStatus | None:
        record = self._store.find(key)
        return None if record is None else self.to_status(record)

    def recent(self, limit: int) -> list[JobStatus]:
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
            option=record.option,
            source_image=str(record.source_image),
            driven_audio=str(record.driven_audio),
            output_path=str(record.output_path),
            error=record.error,
            error_kind=record.error_kind,
            attempts=record.attempts,
            queue_position=position,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            queued_seconds=queued_seconds,
            render_seconds=render_seconds,
        )
