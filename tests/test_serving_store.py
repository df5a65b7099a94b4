"""The SQLite job store: durability, ordering, recovery after a restart, request_id uniqueness."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from serving.store import DuplicateRequestId, JobState, JobStore, NewJob


def new_job(tmp_path: Path, n: int, request_id: str | None = None, **extra: object) -> NewJob:
    fields: dict = {
        "request_id": request_id,
        "fingerprint": f"fp{n}",
        "source_image": tmp_path / f"img{n}.png",
        "driven_audio": tmp_path / f"a{n}.wav",
        "option": "crop",
        "output_path": tmp_path / "out" / f"v{n}.mp4",
    }
    fields.update(extra)
    return NewJob(**fields)


def test_insert_is_durable_across_reopen(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    landmarks = tuple((float(i), float(i) + 0.5) for i in range(68))
    job = store.insert(new_job(tmp_path, 1, "req-1", landmarks=landmarks, audio_seconds=2.8, option="full"))
    store.close()
    # Another connection (another process after a restart) sees the committed row.
    reopened = JobStore(tmp_path / "jobs.sqlite3")
    again = reopened.get(job.id)
    assert again == job
    assert again is not None and again.state is JobState.QUEUED and again.landmarks == landmarks
    assert reopened.find("req-1") == job and reopened.find(job.id) == job
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claim_order_and_lifecycle(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = [store.insert(new_job(tmp_path, n)).id for n in range(3)]
    assert [store.queue_position(i) for i in ids] == [1, 2, 3]
    first = store.claim_next()
    assert first is not None and first.id == ids[0] and first.state is JobState.RUNNING and first.attempts == 1
    assert store.queue_position(ids[0]) is None and store.queue_position(ids[1]) == 1
    store.set_progress(first.id, "render", 42.0)
    assert (store.get(first.id).stage, store.get(first.id).progress) == ("render", 42.0)  # type: ignore[union-attr]
    done = store.complete(first.id)
    assert done.state is JobState.COMPLETED and done.progress == 100 and done.finished_at is not None
    second = store.claim_next()
    assert second is not None and second.id == ids[1]
    failed = store.fail(second.id, "source_image: no face", "no_face")
    assert (failed.state, failed.error, failed.error_kind) == (JobState.FAILED, "source_image: no face", "no_face")
    assert store.counts() == {"queued": 1, "running": 0, "completed": 1, "failed": 1}
    assert [r.id for r in store.recent(10)] == [ids[2], ids[1], ids[0]]
    assert store.mean_job_seconds() is not None


def test_restart_requeues_running_jobs_in_original_order(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = [store.insert(new_job(tmp_path, n)).id for n in range(3)]
    running = store.claim_next()
    assert running is not None
    store.close()  # the process dies mid-render

    store = JobStore(tmp_path / "jobs.sqlite3")
    report = store.recover(max_attempts=3)
    assert report.requeued == (ids[0],) and report.abandoned == ()
    assert [job.id for job in store.queued()] == ids  # the interrupted job keeps its place at the front
    assert store.get(ids[0]).stage == "requeued after restart"  # type: ignore[union-attr]
    assert store.claim_next().id == ids[0]  # type: ignore[union-attr]


def test_job_that_keeps_killing_the_process_is_failed(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.insert(new_job(tmp_path, 1))
    store.claim_next()  # attempt 1 ... process killed
    assert store.recover(max_attempts=2).requeued == (job.id,)
    store.claim_next()  # attempt 2 ... killed again
    report = store.recover(max_attempts=2)
    assert report.abandoned == (job.id,) and report.requeued == ()
    record = store.get(job.id)
    assert record is not None and record.state is JobState.FAILED and record.error_kind == "interrupted"
    assert record.error is not None and "interrupted 2 times" in record.error


def test_graceful_requeue_does_not_count_as_an_attempt(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.insert(new_job(tmp_path, 1))
    store.claim_next()
    requeued = store.requeue(job.id, "interrupted by shutdown")
    assert requeued.state is JobState.QUEUED and requeued.attempts == 0 and requeued.started_at is None


def test_request_id_is_unique(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.insert(new_job(tmp_path, 1, "same"))
    with pytest.raises(DuplicateRequestId):
        store.insert(new_job(tmp_path, 2, "same"))
    # Jobs without a request_id never collide with each other.
    store.insert(new_job(tmp_path, 3))
    store.insert(new_job(tmp_path, 4))
    assert store.count(JobState.QUEUED) == 3


def test_output_path_is_reserved(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.insert(new_job(tmp_path, 1))
    assert store.is_output_reserved(job.output_path)
    assert not store.is_output_reserved(tmp_path / "other.mp4")
    with pytest.raises(sqlite3.IntegrityError):
        store.insert(new_job(tmp_path, 2, output_path=job.output_path))
