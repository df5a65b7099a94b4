"""The job store on PostgreSQL (SADTALKER_DATABASE_URL): several servers share one queue.

Same semantics as the SQLite store (see `serving.store.JobStore`), with PostgreSQL doing the coordination:

* Claiming: `SELECT ... FOR UPDATE SKIP LOCKED` picks the oldest queued row no other transaction is claiming,
  so concurrent workers on any server never take the same job and never wait on each other.
* Leases: owner + expiry columns, renewed by the worker's heartbeat; every write about a running job is
  conditioned on `owner = <me> AND state = 'running'`, so a worker that lost its lease changes nothing.
  Expiry times come from the servers' clocks (keep them NTP-synchronised; the lease is 30 s by default).
* request_id idempotency: a UNIQUE constraint; a concurrent duplicate loses at the insert, not in a pre-read.
* The global queue bound: admissions (insert, retry) take one transaction-scoped advisory lock, then count and
  insert; claims do not take it (they only shrink the queue). Without the lock, two READ COMMITTED
  transactions could both count 15 of 16 and both insert.
* Migrations: ordered scripts in `MIGRATIONS`, recorded in the store's own `sadtalker_schema_migrations`
  table; every process opening the store applies the missing ones under an advisory lock, each in its own
  transaction, so servers starting together migrate once.

Why not a queue library (procrastinate, pgqueuer...): they own their job tables and retry policy, while the
service needs its own row (progress, stage, output path, request JSON) answered by `/status`, owner-guarded
writes and lease expiry rather than a worker-liveness table; the few statements here are the whole queue.

One connection per store instance, shared by the request threads and the workers under a lock (every
statement is tiny); it is re-opened after a connection error.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from serving.schema import JobRequest
from serving.store import (
    WORKER_FORGET_SECONDS,
    DuplicateOutputPath,
    DuplicateRequestId,
    JobRecord,
    JobState,
    JobStore,
    QueueAtCapacity,
    RecoveryReport,
    StoreError,
    WorkerRecord,
)

TABLE = "sadtalker_jobs"
VERSION_TABLE = "sadtalker_schema_migrations"
WORKERS_TABLE = "sadtalker_workers"
# pg_advisory_xact_lock keys (any constant pair unique to this service): migrations, admissions.
_MIGRATION_LOCK = 0x5AD7A1C0
_ADMISSION_LOCK = 0x5AD7A1C1

_V1 = f"""
CREATE TABLE {TABLE} (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    request_id       TEXT    UNIQUE,
    fingerprint      TEXT    NOT NULL,
    request          JSONB   NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed')),
    progress         DOUBLE PRECISION NOT NULL DEFAULT 0,
    stage            TEXT,
    output_path      TEXT    NOT NULL UNIQUE,
    error            TEXT,
    error_kind       TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    owner            TEXT,
    lease_expires_at DOUBLE PRECISION,
    created_at       DOUBLE PRECISION NOT NULL,
    started_at       DOUBLE PRECISION,
    finished_at      DOUBLE PRECISION
);
CREATE INDEX {TABLE}_state ON {TABLE} (state, seq);
CREATE TABLE {WORKERS_TABLE} (
    owner            TEXT    PRIMARY KEY,
    device           TEXT    NOT NULL,
    current_job      TEXT,
    started_at       DOUBLE PRECISION NOT NULL,
    seen_at          DOUBLE PRECISION NOT NULL
)
"""

#: Ordered layout changes: MIGRATIONS[n - 1] brings version n-1 to version n (0 = no table yet).
MIGRATIONS: tuple[str, ...] = (_V1,)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "id, request_id, fingerprint, request, state, progress, stage, output_path, error, error_kind, attempts, "
    "owner, lease_expires_at, created_at, started_at, finished_at"
)


def _redacted(url: str) -> str:
    """The URL without its password, for error messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable SADTALKER_DATABASE_URL>"
    host = info.get("host", "localhost")
    return f"{info.get('user', '')}@{host}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresJobStore(JobStore):
    """The job table in PostgreSQL. Thread-safe; one instance per process; any number of processes/hosts."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        request_type: type[JobRequest] = JobRequest,
        connect_timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._clock = clock
        self._request_type = request_type
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._migrate()

    # -- connection and migrations ----------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self._url, row_factory=dict_row, connect_timeout=max(1, int(self._connect_timeout))
                )
            except psycopg.OperationalError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StoreError(
                    f"job database {_redacted(self._url)} cannot be reached ({first}): check SADTALKER_DATABASE_URL "
                    "and that the server is up"
                ) from None
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        with self._lock:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cursor:
                yield cursor

    def _migrate(self) -> None:
        try:
            self._apply_migrations()
        except psycopg.Error as exc:  # e.g. no CREATE privilege, or not a PostgreSQL we can use
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"job database {_redacted(self._url)} cannot be prepared ({type(exc).__name__}: {first}): "
                "the user needs CREATE on its schema for the first start"
            ) from None

    def _apply_migrations(self) -> None:
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            version = self._read_version(cur)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"job database {_redacted(self._url)} has layout version {version}, newer than this service's "
                    f"{SCHEMA_VERSION}: run the newer service version"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                with cur.connection.transaction():  # a savepoint per step: a failing step names itself
                    for statement in filter(None, (part.strip() for part in MIGRATIONS[number - 1].split(";"))):
                        cur.execute(statement)
                    cur.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (number,))

    @staticmethod
    def _read_version(cur: psycopg.Cursor[dict[str, Any]]) -> int:
        cur.execute(f"SELECT COALESCE(MAX(version), 0) AS v FROM {VERSION_TABLE}")
        row = cur.fetchone()
        return int(row["v"]) if row else 0

    @property
    def version(self) -> int:
        with self._transaction() as cur:
            return self._read_version(cur)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- reads ------------------------------------------------------------------------------------------------

    def _select(self, where: str, params: Sequence[object] = (), tail: str = "") -> list[JobRecord]:
        with self._transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE {where} {tail}", params)
            rows = cur.fetchall()
        return [JobRecord.from_row(row, self._request_type) for row in rows]

    def _one(self, where: str, params: Sequence[object] = ()) -> JobRecord | None:
        found = self._select(where, params, "LIMIT 1")
        return found[0] if found else None

    def _scalar(self, sql: str, params: Sequence[object] = ()) -> Any:
        with self._transaction() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
        return None if row is None else next(iter(row.values()))

    def get(self, job_id: str) -> JobRecord | None:
        return self._one("id = %s", (job_id,))

    def get_by_request_id(self, request_id: str) -> JobRecord | None:
        return self._one("request_id = %s", (request_id,))

    def is_output_reserved(self, path: Path) -> bool:
        return self._scalar(f"SELECT 1 FROM {TABLE} WHERE output_path = %s", (str(path),)) is not None

    def count(self, state: JobState) -> int:
        return int(self._scalar(f"SELECT COUNT(*) FROM {TABLE} WHERE state = %s", (state.value,)))

    def counts(self) -> dict[str, int]:
        with self._transaction() as cur:
            cur.execute(f"SELECT state, COUNT(*) AS n FROM {TABLE} GROUP BY state")
            rows = cur.fetchall()
        result = {state.value: 0 for state in JobState}
        result.update({str(row["state"]): int(row["n"]) for row in rows})
        return result

    def recent(self, limit: int) -> list[JobRecord]:
        return self._select("TRUE", (), f"ORDER BY seq DESC LIMIT {int(limit)}")

    def queued(self) -> list[JobRecord]:
        return self._select("state = 'queued'", (), "ORDER BY seq")

    def queue_position(self, job_id: str) -> int | None:
        value = self._scalar(
            f"SELECT COUNT(*) FROM {TABLE} WHERE state = 'queued' AND seq <= "
            f"(SELECT seq FROM {TABLE} WHERE id = %s AND state = 'queued')",
            (job_id,),
        )
        return int(value) or None

    def mean_job_seconds(self, last: int = 20) -> float | None:
        value = self._scalar(
            f"SELECT AVG(finished_at - started_at) FROM (SELECT finished_at, started_at FROM {TABLE} "
            "WHERE state = 'completed' AND started_at IS NOT NULL ORDER BY seq DESC LIMIT %s) AS recent",
            (last,),
        )
        return None if value is None else float(value)

    def live_job_ids(self) -> set[str]:
        with self._transaction() as cur:
            cur.execute(f"SELECT id FROM {TABLE} WHERE state = 'running' AND lease_expires_at >= %s", (self._clock(),))
            return {str(row["id"]) for row in cur.fetchall()}

    # -- submission -------------------------------------------------------------------------------------------

    def _check_bound(self, cur: psycopg.Cursor[dict[str, Any]], max_queue: int | None) -> None:
        if max_queue is None:
            return
        # Serialises admissions across every server; held until this transaction ends.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADMISSION_LOCK,))
        cur.execute(f"SELECT COUNT(*) AS n FROM {TABLE} WHERE state = 'queued'")
        row = cur.fetchone()
        depth = int(row["n"]) if row else 0
        if depth >= max_queue:
            raise QueueAtCapacity(depth)

    def insert(self, request: JobRequest, output_path: Path, *, max_queue: int | None = None) -> JobRecord:
        job_id = uuid.uuid4().hex
        try:
            with self._transaction() as cur:
                self._check_bound(cur, max_queue)
                cur.execute(
                    f"INSERT INTO {TABLE} (id, request_id, fingerprint, request, state, output_path, created_at) "
                    "VALUES (%s, %s, %s, %s, 'queued', %s, %s)",
                    (
                        job_id,
                        request.request_id,
                        request.fingerprint(),
                        Jsonb(request.model_dump(mode="json")),
                        str(output_path),
                        self._clock(),
                    ),
                )
        except errors.UniqueViolation as exc:
            constraint = exc.diag.constraint_name or ""
            if request.request_id is not None and "request_id" in constraint:
                raise DuplicateRequestId(request.request_id) from exc
            if "output_path" in constraint:
                raise DuplicateOutputPath(output_path) from exc
            raise
        record = self.get(job_id)
        assert record is not None
        return record

    def retry(self, job_id: str, *, max_queue: int | None = None) -> JobRecord | None:
        with self._transaction() as cur:
            cur.execute(f"SELECT 1 FROM {TABLE} WHERE id = %s AND state = 'failed'", (job_id,))
            if cur.fetchone() is None:
                return None
            self._check_bound(cur, max_queue)
            cur.execute(
                f"UPDATE {TABLE} SET state = 'queued', progress = 0, stage = 'resubmitted', error = NULL, "
                "error_kind = NULL, attempts = 0, started_at = NULL, finished_at = NULL, owner = NULL, "
                "lease_expires_at = NULL WHERE id = %s AND state = 'failed'",
                (job_id,),
            )
            changed = cur.rowcount
        return self.get(job_id) if changed else None

    # -- worker side ------------------------------------------------------------------------------------------

    def recover(self, max_attempts: int) -> RecoveryReport:
        now = self._clock()
        expired = "state = 'running' AND COALESCE(lease_expires_at, 0) < %s"
        with self._transaction() as cur:
            # Row locks make a concurrent recover on another server skip what this one takes back (its WHERE
            # is re-checked after our commit and no longer matches).
            cur.execute(
                f"UPDATE {TABLE} SET state = 'queued', progress = 0, stage = 'requeued after restart', "
                f"started_at = NULL, owner = NULL, lease_expires_at = NULL "
                f"WHERE {expired} AND attempts < %s RETURNING id, seq",
                (now, max_attempts),
            )
            requeued = sorted(cur.fetchall(), key=lambda row: row["seq"])
            cur.execute(
                f"UPDATE {TABLE} SET state = 'failed', finished_at = %s, error_kind = 'interrupted', owner = NULL, "
                "lease_expires_at = NULL, "
                "error = 'rendering was interrupted ' || attempts || ' times (process killed or crashed); not retried' "
                f"WHERE {expired} AND attempts >= %s RETURNING id, seq",
                (now, now, max_attempts),
            )
            abandoned = sorted(cur.fetchall(), key=lambda row: row["seq"])
        return RecoveryReport(tuple(str(r["id"]) for r in requeued), tuple(str(r["id"]) for r in abandoned))

    def claim_next(self, owner: str, lease_seconds: float, output_dir: Path | None = None) -> JobRecord | None:
        now = self._clock()
        with self._transaction() as cur:
            cur.execute(
                f"SELECT id, output_path FROM {TABLE} WHERE state = 'queued' ORDER BY seq LIMIT 1 "
                "FOR UPDATE SKIP LOCKED"
            )
            row = cur.fetchone()
            if row is None:
                return None
            output_path = Path(str(row["output_path"]))
            if output_dir is not None and output_path.parent != output_dir:
                output_path = output_dir / output_path.name
            cur.execute(
                f"UPDATE {TABLE} SET state = 'running', started_at = %s, finished_at = NULL, progress = 0, "
                "stage = 'starting', error = NULL, error_kind = NULL, attempts = attempts + 1, owner = %s, "
                "lease_expires_at = %s, output_path = %s WHERE id = %s",
                (now, owner, now + lease_seconds, str(output_path), row["id"]),
            )
        return self.get(str(row["id"]))

    def _update_owned(self, assignments: str, params: tuple[object, ...], job_id: str, owner: str) -> bool:
        with self._transaction() as cur:
            cur.execute(
                f"UPDATE {TABLE} SET {assignments} WHERE id = %s AND owner = %s AND state = 'running'",
                (*params, job_id, owner),
            )
            return bool(cur.rowcount)

    def renew_lease(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        return self._update_owned("lease_expires_at = %s", (self._clock() + lease_seconds,), job_id, owner)

    def set_progress(self, job_id: str, owner: str, stage: str, progress: float) -> None:
        self._update_owned("stage = %s, progress = %s", (stage, progress), job_id, owner)

    def complete(self, job_id: str, owner: str) -> bool:
        return self._update_owned(
            "state = 'completed', progress = 100, stage = 'done', finished_at = %s, owner = NULL, "
            "lease_expires_at = NULL",
            (self._clock(),),
            job_id,
            owner,
        )

    def fail(self, job_id: str, owner: str, error: str, kind: str) -> bool:
        return self._update_owned(
            "state = 'failed', error = %s, error_kind = %s, finished_at = %s, owner = NULL, lease_expires_at = NULL",
            (error, kind, self._clock()),
            job_id,
            owner,
        )

    def requeue(self, job_id: str, owner: str, reason: str) -> bool:
        return self._update_owned(
            "state = 'queued', progress = 0, stage = %s, started_at = NULL, attempts = GREATEST(attempts - 1, 0), "
            "owner = NULL, lease_expires_at = NULL",
            (reason,),
            job_id,
            owner,
        )

    # -- worker registry --------------------------------------------------------------------------------------

    def announce_worker(self, owner: str, device: str, current_job: str | None) -> None:
        now = self._clock()
        with self._transaction() as cur:
            cur.execute(
                f"INSERT INTO {WORKERS_TABLE} (owner, device, current_job, started_at, seen_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (owner) DO UPDATE SET device = EXCLUDED.device, "
                "current_job = EXCLUDED.current_job, seen_at = EXCLUDED.seen_at",
                (owner, device, current_job, now, now),
            )
            cur.execute(f"DELETE FROM {WORKERS_TABLE} WHERE seen_at < %s", (now - WORKER_FORGET_SECONDS,))

    def workers(self, seen_within: float) -> list[WorkerRecord]:
        with self._transaction() as cur:
            cur.execute(
                f"SELECT owner, device, current_job, started_at, seen_at FROM {WORKERS_TABLE} WHERE seen_at >= %s "
                "ORDER BY started_at, owner",
                (self._clock() - seen_within,),
            )
            return [WorkerRecord(**row) for row in cur.fetchall()]

    def forget_worker(self, owner: str) -> None:
        with self._transaction() as cur:
            cur.execute(f"DELETE FROM {WORKERS_TABLE} WHERE owner = %s", (owner,))
