"""Logging of the service: the job id on every line of a job; client errors in one line.

Job id on every log line written while a job runs, including the pipeline's own log lines:
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


#: BentoML's logger for exceptions raised while handling a request (schema validation errors among them).
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


class ClientErrorLogFilter(logging.Filter):
    """A request the client got wrong (4xx) is one WARNING line, not an ERROR with a traceback.

    BentoML logs the pydantic error of a malformed body with ``logger.error(..., exc_info=True)``; the client
    has its answer (400 naming the field), and the operator needs no stack trace for it. Server errors keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_client_error(exc):
            summary = " ".join(str(exc).split())  # one line, whatever the client sent
            if len(summary) > 300:
                summary = summary[:300] + "..."
            where = record.getMessage().removeprefix("Exception on ")
            record.msg = "client error on %s, answered 4xx: %s: %s"
            record.args = (where, type(exc).__name__, summary)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def _is_client_error(exc: BaseException) -> bool:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    status = getattr(exc, "error_code", None)  # BentoMLException subclasses carry their HTTP status
    code = int(status) if status is not None else 500
    return 400 <= code < 500


def install_client_error_log_filter() -> None:
    logger = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(existing, ClientErrorLogFilter) for existing in logger.filters):
        logger.addFilter(ClientErrorLogFilter())
