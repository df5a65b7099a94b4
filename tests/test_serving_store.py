"""The job stores: durability, ordering, leases, recovery, request_id uniqueness, queue bound, migrations.

Every behaviour test runs against both implementations: SQLite, and a real PostgreSQL server started for the
session (tests/postgres_server.py). Layout/migration tests are per implementation.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from serving.schema import JobRequest
from serving.store import (
    SCHEMA_VERSION,
    DuplicateOutputPath,
    DuplicateRequestId,
    JobState,
    JobStore,
    QueueAtCapacity,
    SqliteJobStore,
    StoreError,
    check_database,
    open_store,
)

V1_FIXTURE = Path(__file__).parent / "data" / "store_v1.sql"
LEASE = 30.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(tmp_path: Path, n: int, request_id: str | None = None, **extra: object) -> JobRequest:
    fields: dict = {
        "request_id": request_id,
        "source_image": str(tmp_path / f"img{n}.png"),
        "driven_audio": str(tmp_path / f"a{n}.wav"),
        "preset": "crop",
    }
    return JobRequest(**(fields | extra))


def output(tmp_path: Path, n: int) -> Path:
    return tmp_path / "out" / f"v{n}.mp4"


OpenStore = Callable[..., JobStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_job_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens (and re-opens) one store of the parametrised kind: an SQLite file, or a fresh PostgreSQL database."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    opened: list[JobStore] = []

    def open_(**options: object) -> JobStore:
        store = open_store(url, tmp_path / "jobs.sqlite3", **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def test_insert_is_durable_across_reopen(tmp_path: Path, open_job_store: OpenStore) -> None:
    store = open_job_store()
    landmarks = tuple((float(i), float(i) + 0.5) for i in range(68))
    first = request(tmp_path, 1, "req-1", landmarks=landmarks, audio_seconds=2.8, preset="full")
    job = store.insert(first, output(tmp_path, 1))
    store.close()
    # Another connection (another process after a restart) sees the committed row.
    reopened = open_job_store()
    again = reopened.get(job.id)
    assert again == job
    assert again is not None and again.state is JobState.QUEUED and again.request.landmarks == landmarks
    assert again.request.preset == "full" and again.request.audio_seconds == 2.8
    assert reopened.get_by_request_id("req-1") == job
    if isinstance(store, SqliteJobStore):
        with sqlite3.connect(tmp_path / "jobs.sqlite3") as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_request_id_and_job_id_are_separate_namespaces(tmp_path: Path, open_job_store: OpenStore) -> None:
    store = open_job_store()
    victim = store.insert(request(tmp_path, 1), output(tmp_path, 1))
    # A client may choose a request_id equal to another job's id: it never shadows that job.
    impostor = store.insert(request(tmp_path, 2, victim.id), output(tmp_path, 2))
    assert store.get(victim.id) == victim and store.get_by_request_id(victim.id) == impostor


def test_claim_order_and_lifecycle(tmp_path: Path, open_job_store: OpenStore) -> None:
    store = open_job_store()
    ids = [store.insert(request(tmp_path, n), output(tmp_path, n)).id for n in range(3)]
    assert [store.queue_position(i) for i in ids] == [1, 2, 3]
    first = store.claim_next("me", LEASE)
    assert first is not None and first.id == ids[0] and first.state is JobState.RUNNING and first.attempts == 1
    assert first.owner == "me" and first.lease_expires_at is not None
    assert store.queue_position(ids[0]) is None and store.queue_position(ids[1]) == 1
    store.set_progress(first.id, "me", "render", 42.0)
    assert (store.get(first.id).stage, store.get(first.id).progress) == ("render", 42.0)  # type: ignore[union-attr]
    assert store.complete(first.id, "me")
    done = store.get(first.id)
    assert done is not None and done.state is JobState.COMPLETED and done.progress == 100 and done.owner is None
    second = store.claim_next("me", LEASE)
    assert second is not None and second.id == ids[1]
    assert store.fail(second.id, "me", "source_image: no face", "no_face")
    failed = store.get(second.id)
    assert failed is not None and (failed.state, failed.error, failed.error_kind) == (
        JobState.FAILED,
        "source_image: no face",
        "no_face",
    )
    assert store.counts() == {"queued": 1, "running": 0, "completed": 1, "failed": 1}
    assert [r.id for r in store.recent(10)] == [ids[2], ids[1], ids[0]]
    assert store.mean_job_seconds() is not None


def test_writes_of_a_worker_that_lost_its_job_are_refused(tmp_path: Path, open_job_store: OpenStore) -> None:
    clock = Clock()
    store = open_job_store(clock=clock)
    job = store.insert(request(tmp_path, 1), output(tmp_path, 1))
    store.claim_next("old", LEASE)
    clock.now += LEASE + 1  # "old" stopped renewing: its lease expired
    assert store.recover(max_attempts=3).requeued == (job.id,)
    assert store.claim_next("new", LEASE) is not None
    # The old owner comes back: none of its writes land, the new owner's job is untouched.
    assert not store.renew_lease(job.id, "old", LEASE)
    store.set_progress(job.id, "old", "render", 99.0)
    assert not store.complete(job.id, "old") and not store.fail(job.id, "old", "x", "internal")
    assert not store.requeue(job.id, "old", "x")
    record = store.get(job.id)
    assert record is not None and record.state is JobState.RUNNING and record.owner == "new" and record.progress == 0


def test_recovery_requeues_only_expired_leases(tmp_path: Path, open_job_store: OpenStore) -> None:
    clock = Clock()
    store = open_job_store(clock=clock)
    ids = [store.insert(request(tmp_path, n), output(tmp_path, n)).id for n in range(3)]
    store.claim_next("alive", LEASE)
    clock.now += LEASE / 2
    # Another server starting now must leave the live job alone.
    assert store.recover(max_attempts=3).requeued == ()
    assert store.live_job_ids() == {ids[0]}
    assert store.renew_lease(ids[0], "alive", LEASE)  # heartbeat
    clock.now += LEASE - 1
    assert store.recover(max_attempts=3).requeued == ()  # renewed: still not expired
    clock.now += 2
    report = store.recover(max_attempts=3)
    assert report.requeued == (ids[0],) and report.abandoned == ()
    assert [job.id for job in store.queued()] == ids  # the interrupted job keeps its place at the front
    assert store.get(ids[0]).stage == "requeued after restart"  # type: ignore[union-attr]
    assert store.live_job_ids() == set()


def test_job_that_keeps_killing_the_process_is_failed(tmp_path: Path, open_job_store: OpenStore) -> None:
    clock = Clock()
    store = open_job_store(clock=clock)
    job = store.insert(request(tmp_path, 1), output(tmp_path, 1))
    store.claim_next("a", LEASE)  # attempt 1 ... process killed
    clock.now += LEASE + 1
    assert store.recover(max_attempts=2).requeued == (job.id,)
    store.claim_next("b", LEASE)  # attempt 2 ... killed again
    clock.now += LEASE + 1
    report = store.recover(max_attempts=2)
    assert report.abandoned == (job.id,) and report.requeued == ()
    record = store.get(job.id)
    assert record is not None and record.state is JobState.FAILED and record.error_kind == "interrupted"
    assert record.error is not None and "interrupted 2 times" in record.error


def test_graceful_requeue_does_not_count_as_an_attempt(tmp_path: Path, open_job_store: OpenStore) -> None:
    store = open_job_store()
    job = store.insert(request(tmp_path, 1), output(tmp_path, 1))
    store.claim_next("me", LEASE)
    assert store.requeue(job.id, "me", "interrupted by shutdown")
    requeued = store.get(job.id)
    assert requeued is not None and requeued.state is JobState.QUEUED and requeued.attempts == 0
    assert requeued.started_at is None and requeued.owner is None


def test_retry_requeues_only_failed_jobs(tmp_path: Path, open_job_store: OpenStore) -> None:
    store = open_job_store()
    job = store.insert(request(tmp_path, 1, "r"), output(tmp_path, 1))
    assert store.retry(job.id) is None  # queued: nothing to retry
    store.claim_next("me", LEASE)
    store.fail(job.id, "me", "OutOfMemoryError: CUDA", "out_of_memory")
    again = store.retry(job.id)
    assert again is not None and again.state is JobState.QUEUED and again.error is None and again.attempts == 0


def test_claim_moves_the_output_into_the_current_output_dir(tmp_path: Path, open_job_store: OpenStore) -> None:
    store = open_job_store()
    job = store.insert(request(tmp_path, 1), tmp_path / "old-out" / "20260101-000000_00000001.mp4")
    claimed = store.claim_next("me", LEASE, tmp_path / "new-out")
    assert claimed is not None and claimed.output_path == tmp_path / "new-out" / "20260101-000000_00000001.mp4"
    assert store.get(job.id).output_path == claimed.output_path  # type: ignore[union-attr]


def test_request_id_is_unique(tmp_path: Path, open_job_store: OpenStore) -> None:
    store = open_job_store()
    store.insert(request(tmp_path, 1, "same"), output(tmp_path, 1))
    with pytest.raises(DuplicateRequestId):
        store.insert(request(tmp_path, 2, "same"), output(tmp_path, 2))
    # Jobs without a request_id never collide with each other.
    store.insert(request(tmp_path, 3), output(tmp_path, 3))
    store.insert(request(tmp_path, 4), output(tmp_path, 4))
    assert store.count(JobState.QUEUED) == 3


def test_output_path_is_reserved(tmp_path: Path, open_job_store: OpenStore) -> None:
    store = open_job_store()
    job = store.insert(request(tmp_path, 1), output(tmp_path, 1))
    assert store.is_output_reserved(job.output_path)
    assert not store.is_output_reserved(tmp_path / "other.mp4")
    with pytest.raises(DuplicateOutputPath, match="already belongs to a job") as taken:
        store.insert(request(tmp_path, 2), job.output_path)
    assert taken.value.output_path == job.output_path
    assert store.count(JobState.QUEUED) == 1


def test_queue_bound_counts_only_queued_jobs(tmp_path: Path, open_job_store: OpenStore) -> None:
    store = open_job_store()
    ids = [store.insert(request(tmp_path, n), output(tmp_path, n), max_queue=2).id for n in range(2)]
    with pytest.raises(QueueAtCapacity) as full:
        store.insert(request(tmp_path, 2), output(tmp_path, 2), max_queue=2)
    assert full.value.depth == 2 and store.count(JobState.QUEUED) == 2
    claimed = store.claim_next("me", LEASE)  # a running job frees its queue slot
    assert claimed is not None and claimed.id == ids[0]
    store.insert(request(tmp_path, 3), output(tmp_path, 3), max_queue=2)
    store.fail(ids[0], "me", "CUDA out of memory", "out_of_memory")
    with pytest.raises(QueueAtCapacity):  # a resubmission is an admission too
        store.retry(ids[0], max_queue=2)
    assert store.get(ids[0]).state is JobState.FAILED  # type: ignore[union-attr]
    assert store.retry(ids[0], max_queue=3) is not None


def test_concurrent_workers_never_claim_one_job_twice(tmp_path: Path, open_job_store: OpenStore) -> None:
    # Four stores = four processes (or servers) with their own connections, racing for 40 jobs.
    stores = [open_job_store() for _ in range(4)]
    jobs = {stores[0].insert(request(tmp_path, n), output(tmp_path, n)).id for n in range(40)}
    claimed: dict[str, list[str]] = {}
    barrier = threading.Barrier(len(stores))

    def drain(store: JobStore, owner: str) -> None:
        barrier.wait()
        while (job := store.claim_next(owner, LEASE)) is not None:
            claimed.setdefault(owner, []).append(job.id)
            assert store.complete(job.id, owner)

    threads = [threading.Thread(target=drain, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [job_id for ids in claimed.values() for job_id in ids]
    assert sorted(every) == sorted(jobs)  # each job exactly once
    assert stores[1].counts() == {"queued": 0, "running": 0, "completed": 40, "failed": 0}


def test_concurrent_admissions_respect_the_bound_and_request_ids(tmp_path: Path, open_job_store: OpenStore) -> None:
    # Five stores submit 50 jobs at once against a bound of 16; ten pairs share a request_id.
    stores = [open_job_store() for _ in range(5)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def submit(store: JobStore, worker: int) -> None:
        barrier.wait()
        for k in range(10):
            n = worker * 10 + k
            request_id = f"pair-{n % 20}" if n < 40 else None
            try:
                store.insert(request(tmp_path, n, request_id), output(tmp_path, n), max_queue=16)
                outcomes.append("queued")
            except QueueAtCapacity:
                outcomes.append("full")
            except DuplicateRequestId:
                outcomes.append("duplicate")

    threads = [threading.Thread(target=submit, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 50
    assert outcomes.count("queued") == 16 == stores[0].count(JobState.QUEUED)
    request_ids = [job.request_id for job in stores[0].queued() if job.request_id is not None]
    assert len(request_ids) == len(set(request_ids))


# -- migrations ------------------------------------------------------------------------------------------------


def v1_database(path: Path) -> Path:
    """A database exactly as version 1 of the store wrote it (dumped from that code: tests/data/store_v1.sql)."""
    with sqlite3.connect(path) as db:
        db.executescript(V1_FIXTURE.read_text())
    return path


def test_v1_database_is_migrated_with_its_jobs_intact(tmp_path: Path) -> None:
    path = v1_database(tmp_path / "jobs.sqlite3")
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
        v1_rows = {row[0]: row for row in raw.execute("SELECT id, request_id, state, output_path FROM jobs")}
    store = SqliteJobStore(path)
    assert store.version == SCHEMA_VERSION
    assert {job.id: (job.id, job.request_id, job.state.value, str(job.output_path)) for job in store.recent(50)} == (
        v1_rows
    )
    queued = store.queued()
    assert [job.request_id for job in queued] == ["queued-1", None]
    first = queued[0].request
    assert (first.source_image, first.driven_audio) == ("/data/inputs/face4.png", "/data/inputs/speech4.wav")
    assert first.preset == "full"
    assert first.landmarks is not None and len(first.landmarks) == 68 and first.landmarks[3] == (3.0, 3.5)
    assert first.audio_seconds == 2.0 and queued[1].request.landmarks is None
    failed = store.get_by_request_id("failed-1")
    assert failed is not None and (failed.error_kind, failed.request.preset) == ("no_face", "full")
    # A job v1 left running has no lease: recovery takes it back at once, as v1's restart did.
    running = store.get_by_request_id("running-1")
    assert running is not None and running.state is JobState.RUNNING
    assert store.recover(max_attempts=3).requeued == (running.id,)
    # The migrated queue renders in its original order.
    assert [store.claim_next("me", LEASE).request_id for _ in range(3)] == ["running-1", "queued-1", None]  # type: ignore[union-attr]
    store.close()
    assert SqliteJobStore(path).version == SCHEMA_VERSION  # reopening runs nothing again


def test_every_migration_starts_from_the_previous_layout(tmp_path: Path) -> None:
    # An empty file goes through every migration in order and ends at the same layout as a migrated v1 file.
    def layout(path: Path) -> list[tuple[str, str]]:
        with sqlite3.connect(path) as raw:
            return sorted(raw.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))

    SqliteJobStore(tmp_path / "fresh.sqlite3").close()
    SqliteJobStore(v1_database(tmp_path / "old.sqlite3")).close()
    assert layout(tmp_path / "fresh.sqlite3") == layout(tmp_path / "old.sqlite3")


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    SqliteJobStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        check_database(path)


def test_corrupt_database_is_reported_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"\x13\x37 not a database" * 512)
    with pytest.raises(StoreError) as info:
        check_database(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "move" in message and "jobs are lost" in message
    check_database(tmp_path / "absent.sqlite3")  # a new deployment: nothing to check


def test_one_request_type_end_to_end_through_the_store(tmp_path: Path, open_job_store: OpenStore) -> None:
    """Adding an optional request field touches the request type and the pipeline only (not store/worker)."""
    from prometheus_client import CollectorRegistry

    from serving.metrics import JobMetrics
    from serving.worker import RenderWorker
    from tests.fakes import FakePipeline

    class WithMood(JobRequest):  # a throwaway optional field, as the next feature would add one
        mood: str | None = None

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "img1.png").write_bytes(b"image")
    (inputs / "a1.wav").write_bytes(b"audio")
    store = open_job_store(request_type=WithMood)
    pipeline = FakePipeline(render_seconds=0.0, ticks=2)
    (tmp_path / "out").mkdir()
    worker = RenderWorker(
        pipeline,
        store,
        JobMetrics.create(CollectorRegistry()),
        temp_root=tmp_path / "state" / "tmp",
        input_roots=[inputs],
    )
    store.insert(WithMood(**request(inputs, 1).model_dump(), mood="cheerful"), output(tmp_path, 1))
    done = worker.process_one()
    assert done is not None and done.state is JobState.COMPLETED and done.request.mood == "cheerful"  # type: ignore[attr-defined]
    assert pipeline.calls[0]["mood"] == "cheerful" and pipeline.calls[0]["preset"] == "crop"


def test_workers_announce_themselves_and_go_stale(tmp_path: Path, open_job_store: OpenStore) -> None:
    clock = Clock()
    store, other_process = open_job_store(clock=clock), open_job_store(clock=clock)
    store.announce_worker("host:1:a", "cuda:0", None)
    clock.now += 1
    other_process.announce_worker("host:2:b", "cuda:1", "job-1")
    assert [(w.owner, w.device, w.current_job) for w in store.workers(seen_within=30)] == [
        ("host:1:a", "cuda:0", None),
        ("host:2:b", "cuda:1", "job-1"),
    ]
    clock.now += 20
    store.announce_worker("host:1:a", "cuda:0", "job-2")  # an update keeps its start time
    assert [(w.owner, w.current_job) for w in other_process.workers(seen_within=10)] == [("host:1:a", "job-2")]
    assert store.workers(seen_within=30)[0].started_at == 1_000_000.0
    other_process.forget_worker("host:1:a")
    assert [w.owner for w in store.workers(seen_within=30)] == ["host:2:b"]


def test_unreachable_postgres_is_one_line_without_the_password() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StoreError) as info:
        open_store(f"postgresql://sadtalker:s3cret@127.0.0.1:{port}/jobs")
    message = str(info.value)
    assert "\n" not in message and f"sadtalker@127.0.0.1:{port}/jobs" in message and "s3cret" not in message
    assert "SADTALKER_DATABASE_URL" in message


def test_postgres_layout_is_versioned_in_its_own_table(postgres_url: str) -> None:
    from serving import store_postgres

    open_store(postgres_url).close()
    store = open_store(postgres_url)  # a second start applies nothing again
    assert store.version == store_postgres.SCHEMA_VERSION
    store.close()
    with psycopg.connect(postgres_url) as raw:
        versions = [row[0] for row in raw.execute("SELECT version FROM sadtalker_schema_migrations ORDER BY version")]
        assert versions == list(range(1, store_postgres.SCHEMA_VERSION + 1))
        newer = store_postgres.SCHEMA_VERSION + 1
        raw.execute("INSERT INTO sadtalker_schema_migrations (version) VALUES (%s)", (newer,))
    with pytest.raises(StoreError, match="newer"):
        open_store(postgres_url)


def test_postgres_connection_loss_is_reported_then_recovered(tmp_path: Path, postgres_url: str) -> None:
    from serving.store import is_store_unreachable

    store = open_store(postgres_url)
    job = store.insert(request(tmp_path, 1), output(tmp_path, 1))
    # The server drops our session (restart, failover, idle kill): the next statement fails as "unreachable"
    # (JobService turns that into 503) and the one after reconnects.
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    with pytest.raises(psycopg.OperationalError) as lost:
        store.count(JobState.QUEUED)
    assert is_store_unreachable(lost.value) and not is_store_unreachable(ValueError("input"))
    assert store.get(job.id) == job
    store.close()
