"""Durable job records in SQLite: the queue of the render worker survives restarts.

The table is the queue: the worker claims the oldest `queued` row, so nothing lives only in memory.
Write-ahead logging lets status queries read while the worker writes; `synchronous=FULL` makes a
committed `INSERT` survive a power cut, which is what lets `generate` answer "1" only after the insert.

One connection is shared by the request threads and the worker thread under a lock: every statement
here is tiny, and a single writer avoids SQLITE_BUSY handling altogether.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    request_id   TEXT    UNIQUE,
    fingerprint  TEXT    NOT NULL,
    source_image TEXT    NOT NULL,
    driven_audio TEXT    NOT NULL,
    option       TEXT    NOT NULL,
    landmarks    TEXT,
    audio_seconds REAL,
    state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed')),
    progress     REAL    NOT NULL DEFAULT 0,
    stage        TEXT,
    output_path  TEXT    NOT NULL UNIQUE,
    error        TEXT,
    error_kind   TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL    NOT NULL,
    started_at   REAL,
    finished_at  REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""

_COLUMNS = (
    "id, request_id, fingerprint, source_image, driven_audio, option, landmarks, audio_seconds, state, progress, "
    "stage, output_path, error, error_kind, attempts, created_at, started_at, finished_at"
)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class NewJob:
    """What an accepted request becomes; paths are already resolved and validated."""

    request_id: str | None
    fingerprint: str
    source_image: Path
    driven_audio: Path
    option: str
    output_path: Path
    landmarks: tuple[tuple[float, float], ...] | None = None
    audio_seconds: float | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    request_id: str | None
    fingerprint: str
    source_image: Path
    driven_audio: Path
    option: str
    landmarks: tuple[tuple[float, float], ...] | None
    audio_seconds: float | None
    state: JobState
    progress: float
    stage: str | None
    output_path: Path
    error: str | None
    error_kind: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def is_finished(self) -> bool:
        return self.state in (JobState.COMPLETED, JobState.FAILED)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        def optional(name: str, kind: Callable[[Any], Any]) -> Any:
            return None if row[name] is None else kind(row[name])

        landmarks = optional("landmarks", json.loads)
        return cls(
            id=row["id"],
            request_id=row["request_id"],
            fingerprint=row["fingerprint"],
            source_image=Path(row["source_image"]),
            driven_audio=Path(row["driven_audio"]),
            option=row["option"],
            landmarks=None if landmarks is None else tuple((float(x), float(y)) for x, y in landmarks),
            audio_seconds=optional("audio_seconds", float),
            state=JobState(row["state"]),
            progress=float(row["progress"]),
            stage=row["stage"],
            output_path=Path(row["output_path"]),
            error=row["error"],
            error_kind=row["error_kind"],
            attempts=int(row["attempts"]),
            created_at=float(row["created_at"]),
            started_at=optional("started_at", float),
            finished_at=optional("finished_at", float),
        )


@dataclass(frozen=True)
class RecoveryReport:
    """What `JobStore.recover` did with jobs a previous process left behind."""

    requeued: tuple[str, ...]
    abandoned: tuple[str, ...]


class DuplicateRequestId(Exception):
    """`insert` found the request_id already taken (a concurrent submission won the race)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request_id {request_id!r} already exists")
        self.request_id = request_id


class JobStore:
    """SQLite-backed job table. Thread-safe; one instance per process."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.RLock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so each multi-statement change is one transaction.
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            # Idempotent DDL (IF NOT EXISTS); executescript commits on its own.
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, params: Sequence[object] = ()) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {sql}", params).fetchone()
        return None if row is None else JobRecord.from_row(row)

    # -- submission -------------------------------------------------------------------------------------------

    def insert(self, job: NewJob) -> JobRecord:
        """Record an accepted job as `queued` (committed durably before returning)."""
        job_id = uuid.uuid4().hex
        landmarks = None if job.landmarks is None else json.dumps([list(p) for p in job.landmarks])
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO jobs (id, request_id, fingerprint, source_image, driven_audio, option, landmarks, "
                    "audio_seconds, state, output_path, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (
                        job_id,
                        job.request_id,
                        job.fingerprint,
                        str(job.source_image),
                        str(job.driven_audio),
                        job.option,
                        landmarks,
                        job.audio_seconds,
                        str(job.output_path),
                        self._clock(),
                    ),
                )
        except sqlite3.IntegrityError as exc:
            if job.request_id is not None and "request_id" in str(exc):
                raise DuplicateRequestId(job.request_id) from exc
            raise
        record = self.get(job_id)
        assert record is not None
        return record

    def get(self, job_id: str) -> JobRecord | None:
        return self._one("id = ?", (job_id,))

    def get_by_request_id(self, request_id: str) -> JobRecord | None:
        return self._one("request_id = ?", (request_id,))

    def find(self, key: str) -> JobRecord | None:
        """A job by client request_id, else by job id."""
        return self.get_by_request_id(key) or self.get(key)

    def is_output_reserved(self, path: Path) -> bool:
        return self._one("output_path = ?", (str(path),)) is not None

    def count(self, state: JobState) -> int:
        with self._lock:
            (value,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state.value,)).fetchone()
        return int(value)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        result = {state.value: 0 for state in JobState}
        result.update({str(state): int(n) for state, n in rows})
        return result

    def recent(self, limit: int) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def queued(self) -> list[JobRecord]:
        """Queued jobs in the order the worker will render them."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY seq").fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to render, 2 for the one after...; None unless the job is queued."""
        with self._lock:
            (value,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq <= "
                "(SELECT seq FROM jobs WHERE id = ? AND state = 'queued')",
                (job_id,),
            ).fetchone()
        return int(value) or None

    def mean_job_seconds(self, last: int = 20) -> float | None:
        """Mean wall time of the last completed jobs (for Retry-After); None before the first one."""
        with self._lock:
            (value,) = self._db.execute(
                "SELECT AVG(finished_at - started_at) FROM (SELECT finished_at, started_at FROM jobs "
                "WHERE state = 'completed' AND started_at IS NOT NULL ORDER BY seq DESC LIMIT ?)",
                (last,),
            ).fetchone()
        return None if value is None else float(value)

    # -- worker side ------------------------------------------------------------------------------------------

    def recover(self, max_attempts: int) -> RecoveryReport:
        """Start-up: jobs left `running` by a previous process go back to the queue (or fail after too many tries).

        A render that was cut short ``max_attempts`` times is more likely to be killing the process
        (e.g. out of memory) than unlucky, so it is failed instead of looping forever.
        """
        now = self._clock()
        with self._transaction() as db:
            rows = db.execute("SELECT id, attempts FROM jobs WHERE state = 'running' ORDER BY seq").fetchall()
            requeued = [str(job_id) for job_id, attempts in rows if attempts < max_attempts]
            abandoned = [str(job_id) for job_id, attempts in rows if attempts >= max_attempts]
            db.executemany(
                "UPDATE jobs SET state = 'queued', progress = 0, stage = 'requeued after restart', started_at = NULL "
                "WHERE id = ?",
                [(job_id,) for job_id in requeued],
            )
            db.executemany(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error_kind = 'interrupted', "
                "error = 'rendering was interrupted ' || attempts || ' times (process killed or crashed); not retried' "
                "WHERE id = ?",
                [(now, job_id) for job_id in abandoned],
            )
        return RecoveryReport(tuple(requeued), tuple(abandoned))

    def claim_next(self) -> JobRecord | None:
        """Atomically move the oldest queued job to `running` and return it (None if the queue is empty)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, finished_at = NULL, progress = 0, "
                "stage = 'starting', error = NULL, error_kind = NULL, attempts = attempts + 1 WHERE id = ?",
                (self._clock(), row[0]),
            )
        return self.get(str(row[0]))

    def set_progress(self, job_id: str, stage: str, progress: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET stage = ?, progress = ? WHERE id = ? AND state = 'running'",
                (stage, progress, job_id),
            )

    def complete(self, job_id: str) -> JobRecord:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'completed', progress = 100, stage = 'done', finished_at = ? WHERE id = ?",
                (self._clock(), job_id),
            )
        return self._must(job_id)

    def fail(self, job_id: str, error: str, kind: str) -> JobRecord:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, error_kind = ?, finished_at = ? WHERE id = ?",
                (error, kind, self._clock(), job_id),
            )
        return self._must(job_id)

    def requeue(self, job_id: str, reason: str) -> JobRecord:
        """Put a gracefully interrupted job back at its place in the queue; the attempt does not count."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', progress = 0, stage = ?, started_at = NULL, "
                "attempts = MAX(attempts - 1, 0) WHERE id = ?",
                (reason, job_id),
            )
        return self._must(job_id)

    def _must(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise KeyError(job_id)
        return record
