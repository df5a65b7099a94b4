"""Job id on every log line written while a job runs, including the pipeline's own log lines.

The worker sets a context variable around each job; a filter on the root logger's handlers adds
``record.job_id`` (for structured formatters) and prefixes the message with ``job=<id>`` (for the plain
formatter BentoML installs), so `grep job=<id>` gives the whole story of one job.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager

_current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("sadtalker_job_id", default=None)


@contextmanager
def job_context(job_id: str, request_id: str | None = None) -> Iterator[None]:
    """Tag log records emitted inside this block (in this thread/context) with the job."""
    tag = job_id if request_id is None else f"{job_id} request_id={request_id}"
    token = _current_job.set(tag)
    try:
        yield
    finally:
        _current_job.reset(token)


class JobLogFilter(logging.Filter):
    """Adds ``job_id`` to records and ``job=<id>`` to their message while a job context is active."""

    def filter(self, record: logging.LogRecord) -> bool:
        tag = _current_job.get()
        record.job_id = tag or "-"
        # The same record passes every handler's filter; prefix once.
        if tag is not None and not getattr(record, "_job_tagged", False):
            record.msg = f"job={tag} {record.msg}"
            record._job_tagged = True
        return True


def install_job_log_filter(logger: logging.Logger | None = None) -> None:
    """Attach a JobLogFilter to every handler of ``logger`` (default: root), idempotently.

    Handler filters (unlike logger filters) also see records propagated from child loggers such as
    ``sadtalker.pipeline``, which is what puts the job id on the pipeline's lines.
    """
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(existing, JobLogFilter) for existing in handler.filters):
            handler.addFilter(JobLogFilter())
