"""Durable job records: the queue of the render workers survives restarts.

`JobStore` is the interface the rest of serving talks to; `SqliteJobStore` (here, the embedded default: one
host) and `serving.store_postgres.PostgresJobStore` (several servers on one database) implement it, and
`open_store` picks one from the configuration. The notes below describe the SQLite implementation; the
PostgreSQL one keeps the same semantics (see its module).

The table is the queue: a worker claims the oldest `queued` row, so nothing lives only in memory.
Write-ahead logging lets status queries read while the worker writes; `synchronous=FULL` makes a
committed `INSERT` survive a power cut, which is what lets `generate` answer "1" only after the insert.

A job's request (`serving.schema.JobRequest`) is ONE JSON column: the store never looks inside it except
for `request_id`, its lookup key. Everything else in a row is the service's bookkeeping.

Leases: a claimed job records its owner (one render worker) and a lease expiry the owner renews while it
renders. Only a job whose lease has expired is taken back (requeued, or failed after too many attempts), so
several workers or servers on one state directory never render a job twice; every write a worker makes
about its job is conditioned on still owning it.

The layout is versioned by `PRAGMA user_version`; `MIGRATIONS` bring any older database up to date, in
order, each in its own transaction, when the store is opened.

One connection per process is shared by the request threads and the worker thread under a lock: every
statement here is tiny, and the `timeout` covers the rare write of another process on the same file.
"""

from __future__ import annotations

import abc
import enum
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from serving.schema import JobRequest

_V1_SCHEMA = """
CREATE TABLE jobs (
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
CREATE INDEX jobs_state ON jobs (state, seq);
"""

# Version 2: the request as one JSON column (`JobRequest`), leases (owner + expiry), no per-field columns.
_V2_MIGRATION = """
CREATE TABLE jobs_v2 (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    request_id   TEXT    UNIQUE,
    fingerprint  TEXT    NOT NULL,
    request      TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed')),
    progress     REAL    NOT NULL DEFAULT 0,
    stage        TEXT,
    output_path  TEXT    NOT NULL UNIQUE,
    error        TEXT,
    error_kind   TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    owner        TEXT,
    lease_expires_at REAL,
    created_at   REAL    NOT NULL,
    started_at   REAL,
    finished_at  REAL
);
INSERT INTO jobs_v2 (seq, id, request_id, fingerprint, request, state, progress, stage, output_path, error,
                     error_kind, attempts, owner, lease_expires_at, created_at, started_at, finished_at)
SELECT seq, id, request_id, fingerprint,
       json_object('source_image', source_image, 'driven_audio', driven_audio, 'preset', option,
                   'request_id', request_id, 'landmarks', json(landmarks), 'audio_seconds', audio_seconds),
       state, progress, stage, output_path, error, error_kind, attempts,
       -- A v1 job left running had no lease: it is expired at once, so recovery treats it as before.
       NULL, CASE WHEN state = 'running' THEN 0 END, created_at, started_at, finished_at
FROM jobs ORDER BY seq;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
CREATE INDEX jobs_state ON jobs (state, seq);
"""

# Version 3: the render workers announce themselves (device, current job) for /system_info across processes.
_V3_MIGRATION = """
CREATE TABLE workers (
    owner        TEXT    PRIMARY KEY,
    device       TEXT    NOT NULL,
    current_job  TEXT,
    started_at   REAL    NOT NULL,
    seen_at      REAL    NOT NULL
);
"""

#: Ordered layout changes: MIGRATIONS[n - 1] turns a version n-1 database into version n (0 = empty file).
MIGRATIONS: tuple[str, ...] = (_V1_SCHEMA, _V2_MIGRATION, _V3_MIGRATION)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "id, request_id, fingerprint, request, state, progress, stage, output_path, error, error_kind, attempts, "
    "owner, lease_expires_at, created_at, started_at, finished_at"
)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class StoreError(RuntimeError):
    """The job database cannot be used (corrupt, unreadable, or from a newer version of the service)."""


class StoreFull(RuntimeError):
    """The job database could not be written: its disk is full or read-only, or (PostgreSQL) it cannot be reached
    (HTTP 503 on /generate)."""


class StoreUnavailable(RuntimeError):
    """The job database cannot be read right now (PostgreSQL unreachable): HTTP 503 on /status, /jobs, /video."""


@dataclass(frozen=True)
class JobRecord:
    id: str
    request_id: str | None
    fingerprint: str
    request: JobRequest
    state: JobState
    progress: float
    stage: str | None
    output_path: Path
    error: str | None
    error_kind: str | None
    attempts: int
    owner: str | None
    lease_expires_at: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, object], request_type: type[JobRequest]) -> JobRecord:
        """One row of either store: the request is JSON text (SQLite) or an already decoded object (PostgreSQL)."""
        fields = dict(row)
        raw = row["request"]
        fields["request"] = (
            request_type.model_validate_json(raw) if isinstance(raw, str | bytes) else request_type.model_validate(raw)
        )
        fields["state"] = JobState(str(row["state"]))
        fields["output_path"] = Path(str(row["output_path"]))
        return cls(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WorkerRecord:
    """A render worker as it last announced itself (every few seconds while alive)."""

    owner: str
    device: str
    current_job: str | None
    started_at: float
    seen_at: float


#: Announcements older than this are dropped from the table (a worker killed long ago).
WORKER_FORGET_SECONDS = 3600.0


@dataclass(frozen=True)
class RecoveryReport:
    """Jobs whose owner's lease expired: back in the queue, or failed after too many interrupted attempts."""

    requeued: tuple[str, ...]
    abandoned: tuple[str, ...]


class QueueAtCapacity(Exception):
    """`insert`/`retry` with ``max_queue``: that many jobs are already queued (in the whole store, every server)."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} jobs queued")
        self.depth = depth


class DuplicateOutputPath(Exception):
    """`insert` found the output path taken: another server allocated the same name between its check and ours."""

    def __init__(self, output_path: Path) -> None:
        super().__init__(f"output path {str(output_path)!r} already belongs to a job")
        self.output_path = output_path


class DuplicateRequestId(Exception):
    """`insert` found the request_id already taken (a concurrent submission won the race)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request_id {request_id!r} already exists")
        self.request_id = request_id


def check_database(path: Path) -> None:
    """Raise StoreError (one line: the file and what to do) unless ``path`` is absent or a sound job database.

    Runs SQLite's integrity check; meant for start-up, before any worker opens the file.
    """
    if not path.exists():
        return
    advice = f"move {path} aside (its jobs are lost) and start again"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            result = [str(row[0]) for row in db.execute("PRAGMA integrity_check")]
            (version,) = db.execute("PRAGMA user_version").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"job database {path} cannot be read ({exc}): {advice}") from None
    if result != ["ok"]:
        raise StoreError(f"job database {path} is corrupt ({'; '.join(result[:3])}): {advice}")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"job database {path} has layout version {version}, newer than this service's {SCHEMA_VERSION}: "
            "run the newer service version, or move the file aside (its jobs are lost)"
        )


def is_disk_full(exc: BaseException) -> bool:
    """The store cannot write for lack of space or write access: the state disk/database, not the request.

    SQLite: 'database or disk is full' / read-only / I/O errors. PostgreSQL (psycopg's SQLSTATE classes, by name
    so this module does not import the driver): disk full, out of memory, read-only transaction (a standby).
    """
    if isinstance(exc, sqlite3.OperationalError):
        return any(text in str(exc) for text in ("disk is full", "readonly", "read-only", "disk I/O error"))
    return type(exc).__name__ in {"DiskFull", "InsufficientResources", "OutOfMemory", "ReadOnlySqlTransaction"}


def is_store_unreachable(exc: BaseException) -> bool:
    """The PostgreSQL server cannot be reached or dropped the connection (psycopg's OperationalError family)."""
    if isinstance(exc, StoreError):
        return True
    return type(exc).__module__.startswith("psycopg") and any(
        cls.__name__ == "OperationalError" for cls in type(exc).__mro__
    )


class JobStore(abc.ABC):
    """The job queue the service talks to; one instance per process, thread-safe.

    Every implementation gives the same guarantees: a committed `insert` survives a crash; `claim_next` hands
    a queued job to exactly one owner; writes about a running job land only while the writer owns it; the
    queue bound (``max_queue``) and request_id uniqueness hold across every process using the store.
    """

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """The layout version the store is at (its own migrations)."""

    # -- submission
    @abc.abstractmethod
    def insert(self, request: JobRequest, output_path: Path, *, max_queue: int | None = None) -> JobRecord:
        """Record an accepted job as `queued`, committed before returning.

        Raises DuplicateRequestId (request_id taken), DuplicateOutputPath (the name was taken by a concurrent
        insert; the caller picks another), QueueAtCapacity (``max_queue`` jobs already queued; the
        count and the insert are one atomic step for every process on the store).
        """

    @abc.abstractmethod
    def retry(self, job_id: str, *, max_queue: int | None = None) -> JobRecord | None:
        """A failed job back to `queued` (new attempt series); None if it is not failed. May raise QueueAtCapacity."""

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def get_by_request_id(self, request_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def is_output_reserved(self, path: Path) -> bool: ...

    @abc.abstractmethod
    def count(self, state: JobState) -> int: ...

    @abc.abstractmethod
    def counts(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def recent(self, limit: int) -> list[JobRecord]: ...

    @abc.abstractmethod
    def queued(self) -> list[JobRecord]:
        """Queued jobs in the order the workers will render them."""

    @abc.abstractmethod
    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to render, 2 for the one after...; None unless the job is queued."""

    @abc.abstractmethod
    def mean_job_seconds(self, last: int = 20) -> float | None:
        """Mean wall time of the last completed jobs (for Retry-After); None before the first one."""

    # -- worker side
    @abc.abstractmethod
    def recover(self, max_attempts: int) -> RecoveryReport:
        """Running jobs whose lease expired go back to the queue (or fail after ``max_attempts``)."""

    @abc.abstractmethod
    def claim_next(self, owner: str, lease_seconds: float, output_dir: Path | None = None) -> JobRecord | None:
        """Atomically move the oldest queued job to `running`, owned by ``owner`` until its lease expires."""

    @abc.abstractmethod
    def renew_lease(self, job_id: str, owner: str, lease_seconds: float) -> bool: ...

    @abc.abstractmethod
    def live_job_ids(self) -> set[str]: ...

    @abc.abstractmethod
    def set_progress(self, job_id: str, owner: str, stage: str, progress: float) -> None: ...

    @abc.abstractmethod
    def complete(self, job_id: str, owner: str) -> bool: ...

    @abc.abstractmethod
    def fail(self, job_id: str, owner: str, error: str, kind: str) -> bool: ...

    @abc.abstractmethod
    def requeue(self, job_id: str, owner: str, reason: str) -> bool:
        """Put a gracefully interrupted job back at its place in the queue; the attempt does not count."""

    # -- worker registry (for /system_info)
    @abc.abstractmethod
    def announce_worker(self, owner: str, device: str, current_job: str | None) -> None:
        """Record that ``owner`` is alive on ``device``, rendering ``current_job`` (upsert; seen_at = now)."""

    @abc.abstractmethod
    def workers(self, seen_within: float) -> list[WorkerRecord]:
        """Workers that announced themselves in the last ``seen_within`` seconds, oldest first."""

    @abc.abstractmethod
    def forget_worker(self, owner: str) -> None:
        """A worker stopped cleanly: remove its announcement."""


def open_store(
    database_url: str | None,
    sqlite_path: Path | None = None,
    *,
    clock: Callable[[], float] = time.time,
    request_type: type[JobRequest] = JobRequest,
) -> JobStore:
    """PostgreSQL when ``database_url`` is set (SADTALKER_DATABASE_URL), else the SQLite file ``sqlite_path``."""
    if database_url:
        from serving.store_postgres import PostgresJobStore

        return PostgresJobStore(database_url, clock=clock, request_type=request_type)
    if sqlite_path is None:
        raise ValueError("open_store: give a PostgreSQL URL or an SQLite file path")
    return SqliteJobStore(sqlite_path, clock=clock, request_type=request_type)


class SqliteJobStore(JobStore):
    """SQLite-backed job table. Thread-safe; one instance per process (several processes may share the file)."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, request_type: type[JobRequest] = JobRequest
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._request_type = request_type
        self._lock = threading.RLock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so each multi-statement change is one transaction.
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _migrate(self) -> None:
        with self._transaction() as db:  # IMMEDIATE: two processes starting together migrate once
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreError(f"job database {self.path} has layout version {version}, newer than {SCHEMA_VERSION}")
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _statements(MIGRATIONS[number - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={number}")

    @property
    def version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

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
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _select(self, where: str, params: Sequence[object] = (), tail: str = "") -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {where} {tail}", params).fetchall()
        return [JobRecord.from_row(row, self._request_type) for row in rows]

    def _one(self, where: str, params: Sequence[object] = ()) -> JobRecord | None:
        found = self._select(where, params, "LIMIT 1")
        return found[0] if found else None

    # -- submission -------------------------------------------------------------------------------------------

    def insert(self, request: JobRequest, output_path: Path, *, max_queue: int | None = None) -> JobRecord:
        """Record an accepted job as `queued` (committed durably before returning)."""
        job_id = uuid.uuid4().hex
        try:
            # BEGIN IMMEDIATE takes the database's write lock first: the count and the insert are atomic for
            # every process on the file.
            with self._transaction() as db:
                self._check_bound(db, max_queue)
                db.execute(
                    "INSERT INTO jobs (id, request_id, fingerprint, request, state, output_path, created_at) "
                    "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                    (
                        job_id,
                        request.request_id,
                        request.fingerprint(),
                        request.model_dump_json(),
                        str(output_path),
                        self._clock(),
                    ),
                )
        except sqlite3.IntegrityError as exc:
            if request.request_id is not None and "request_id" in str(exc):
                raise DuplicateRequestId(request.request_id) from exc
            if "output_path" in str(exc):
                raise DuplicateOutputPath(output_path) from exc
            raise
        return self._must(job_id)

    @staticmethod
    def _check_bound(db: sqlite3.Connection, max_queue: int | None) -> None:
        if max_queue is not None:
            (depth,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()
            if depth >= max_queue:
                raise QueueAtCapacity(int(depth))

    def retry(self, job_id: str, *, max_queue: int | None = None) -> JobRecord | None:
        """A failed job back to `queued` as a new attempt series (resubmission); None if it is not failed."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM jobs WHERE id = ? AND state = 'failed'", (job_id,)).fetchone() is None:
                return None
            self._check_bound(db, max_queue)
            changed = db.execute(
                "UPDATE jobs SET state = 'queued', progress = 0, stage = 'resubmitted', error = NULL, "
                "error_kind = NULL, attempts = 0, started_at = NULL, finished_at = NULL, owner = NULL, "
                "lease_expires_at = NULL WHERE id = ? AND state = 'failed'",
                (job_id,),
            ).rowcount
        return self.get(job_id) if changed else None

    def get(self, job_id: str) -> JobRecord | None:
        return self._one("id = ?", (job_id,))

    def get_by_request_id(self, request_id: str) -> JobRecord | None:
        return self._one("request_id = ?", (request_id,))

    def is_output_reserved(self, path: Path) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM jobs WHERE output_path = ?", (str(path),)).fetchone() is not None

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
        return self._select("1", (), f"ORDER BY seq DESC LIMIT {int(limit)}")

    def queued(self) -> list[JobRecord]:
        """Queued jobs in the order the workers will render them."""
        return self._select("state = 'queued'", (), "ORDER BY seq")

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
        """Running jobs whose lease expired (owner killed, crashed or cut off) go back to the queue.

        A render that was cut short ``max_attempts`` times is more likely to be killing the process
        (e.g. out of memory) than unlucky, so it is failed instead of looping forever. Jobs whose owner
        still renews its lease are left alone: that worker is alive (another server, or an orphaned
        worker process) and will finish them.
        """
        now = self._clock()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, attempts FROM jobs WHERE state = 'running' AND COALESCE(lease_expires_at, 0) < ? "
                "ORDER BY seq",
                (now,),
            ).fetchall()
            requeued = [str(job_id) for job_id, attempts in rows if attempts < max_attempts]
            abandoned = [str(job_id) for job_id, attempts in rows if attempts >= max_attempts]
            db.executemany(
                "UPDATE jobs SET state = 'queued', progress = 0, stage = 'requeued after restart', started_at = NULL, "
                "owner = NULL, lease_expires_at = NULL WHERE id = ?",
                [(job_id,) for job_id in requeued],
            )
            db.executemany(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error_kind = 'interrupted', owner = NULL, "
                "lease_expires_at = NULL, "
                "error = 'rendering was interrupted ' || attempts || ' times (process killed or crashed); not retried' "
                "WHERE id = ?",
                [(now, job_id) for job_id in abandoned],
            )
        return RecoveryReport(tuple(requeued), tuple(abandoned))

    def claim_next(self, owner: str, lease_seconds: float, output_dir: Path | None = None) -> JobRecord | None:
        """Atomically move the oldest queued job to `running`, owned by ``owner`` until its lease expires.

        ``output_dir``: where this worker writes videos now; a job queued under another output directory (a
        restart with a new SADTALKER_OUTPUT_DIR) keeps its file name but moves there.
        """
        now = self._clock()
        with self._transaction() as db:
            row = db.execute("SELECT id, output_path FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            output_path = Path(row["output_path"])
            if output_dir is not None and output_path.parent != output_dir:
                output_path = output_dir / output_path.name
            db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, finished_at = NULL, progress = 0, "
                "stage = 'starting', error = NULL, error_kind = NULL, attempts = attempts + 1, owner = ?, "
                "lease_expires_at = ?, output_path = ? WHERE id = ?",
                (now, owner, now + lease_seconds, str(output_path), row["id"]),
            )
        return self.get(str(row["id"]))

    def renew_lease(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        """Heartbeat: extend the lease; False if the job is no longer ours (lease expired and taken back)."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND owner = ? AND state = 'running'",
                (self._clock() + lease_seconds, job_id, owner),
            ).rowcount
        return bool(changed)

    def live_job_ids(self) -> set[str]:
        """Running jobs whose lease has not expired (their owners' temp dirs must be left alone)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at >= ?", (self._clock(),)
            ).fetchall()
        return {str(job_id) for (job_id,) in rows}

    def set_progress(self, job_id: str, owner: str, stage: str, progress: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET stage = ?, progress = ? WHERE id = ? AND owner = ? AND state = 'running'",
                (stage, progress, job_id, owner),
            )

    def complete(self, job_id: str, owner: str) -> bool:
        """Mark our running job completed; False if it is no longer ours."""
        return self._finish(
            "state = 'completed', progress = 100, stage = 'done', finished_at = ?", (self._clock(),), job_id, owner
        )

    def fail(self, job_id: str, owner: str, error: str, kind: str) -> bool:
        """Mark our running job failed; False if it is no longer ours."""
        return self._finish(
            "state = 'failed', error = ?, error_kind = ?, finished_at = ?", (error, kind, self._clock()), job_id, owner
        )

    def requeue(self, job_id: str, owner: str, reason: str) -> bool:
        """Put a gracefully interrupted job back at its place in the queue; the attempt does not count."""
        return self._finish(
            "state = 'queued', progress = 0, stage = ?, started_at = NULL, attempts = MAX(attempts - 1, 0)",
            (reason,),
            job_id,
            owner,
        )

    def announce_worker(self, owner: str, device: str, current_job: str | None) -> None:
        now = self._clock()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO workers (owner, device, current_job, started_at, seen_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (owner) DO UPDATE SET device = excluded.device, current_job = excluded.current_job, "
                "seen_at = excluded.seen_at",
                (owner, device, current_job, now, now),
            )
            db.execute("DELETE FROM workers WHERE seen_at < ?", (now - WORKER_FORGET_SECONDS,))

    def workers(self, seen_within: float) -> list[WorkerRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, device, current_job, started_at, seen_at FROM workers WHERE seen_at >= ? "
                "ORDER BY started_at, owner",
                (self._clock() - seen_within,),
            ).fetchall()
        return [WorkerRecord(**dict(row)) for row in rows]

    def forget_worker(self, owner: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM workers WHERE owner = ?", (owner,))

    def _finish(self, assignments: str, params: tuple[object, ...], job_id: str, owner: str) -> bool:
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE jobs SET {assignments}, owner = NULL, lease_expires_at = NULL "
                "WHERE id = ? AND owner = ? AND state = 'running'",
                (*params, job_id, owner),
            ).rowcount
        return bool(changed)

    def _must(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise KeyError(job_id)
        return record


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit our transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {buffer!r}")
    return statements
