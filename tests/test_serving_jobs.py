"""Submission logic (what /generate does), in-process: idempotency, queue bound, durability, start-up checks."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from test_serving_validation import make_config, write_png, write_wav

from serving.config import ServingConfig
from serving.jobs import JobNotFound, NotAccepting, QueueFull, RequestConflict
from serving.metrics import JobMetrics
from serving.runtime import Runtime, StartupError, assign_gpu, check_compile_toolchain, one_line, preflight
from serving.schema import GenerateRequest
from serving.store import JobState, StoreFull
from serving.validation import RequestInvalid
from tests.fakes import FakePipeline


@pytest.fixture
def config(tmp_path: Path) -> ServingConfig:
    config = make_config(tmp_path, max_queue=3, allow_cpu=True)
    write_png(config.input_dirs[0] / "face.png")
    write_wav(config.input_dirs[0] / "speech.wav")
    return config


def start(config: ServingConfig, **kwargs: object) -> Runtime:
    kwargs.setdefault("pipeline", FakePipeline(render_seconds=0.0))
    kwargs.setdefault("metrics", JobMetrics.create(CollectorRegistry()))
    kwargs.setdefault("start_worker", False)  # jobs stay queued unless a test renders them
    kwargs.setdefault("cuda_available", lambda: False)
    return Runtime.start(config, **kwargs)  # type: ignore[arg-type]


def req(config: ServingConfig, **extra: object) -> GenerateRequest:
    root = config.input_dirs[0]
    fields = {"source_image": root / "face.png", "driven_audio": root / "speech.wav", "option": "crop"} | extra
    return GenerateRequest(**fields)  # type: ignore[arg-type]


def test_accepted_job_is_durable_before_submit_returns(config: ServingConfig) -> None:
    runtime = start(config)
    submission = runtime.jobs.submit(req(config, request_id="r1"))
    assert not submission.duplicate and submission.job.state is JobState.QUEUED
    assert submission.job.output_path.parent == config.output_dir
    assert not submission.job.output_path.exists()
    # A fresh process (new connection) sees it: recorded before "1" would be returned.
    again = start(config)
    status = again.jobs.status(request_id="r1")
    assert status.job_id == submission.job.id and status.queue_position == 1


def test_invalid_request_queues_nothing(config: ServingConfig) -> None:
    runtime = start(config)
    with pytest.raises(RequestInvalid) as info:
        runtime.jobs.submit(req(config, driven_audio=config.input_dirs[0] / "missing.wav"))
    assert info.value.field == "driven_audio"
    assert runtime.store.counts() == {"queued": 0, "running": 0, "completed": 0, "failed": 0}


def test_same_request_id_same_inputs_renders_once(config: ServingConfig) -> None:
    pipeline = FakePipeline(render_seconds=0.0)
    runtime = start(config, pipeline=pipeline)
    first = runtime.jobs.submit(req(config, request_id="dup"))
    # str vs Path spelling of the same file is the same input.
    root = config.input_dirs[0]
    second = runtime.jobs.submit(req(config, request_id="dup", source_image=str(root / "face.png")))
    assert second.duplicate and second.job.id == first.job.id
    runtime.worker.process_one()
    third = runtime.jobs.submit(req(config, request_id="dup"))  # also after completion
    assert third.duplicate and third.job.state is JobState.COMPLETED
    assert runtime.worker.process_one() is None and len(pipeline.calls) == 1


def test_same_request_id_different_inputs_conflicts(config: ServingConfig) -> None:
    runtime = start(config)
    runtime.jobs.submit(req(config, request_id="r"))
    with pytest.raises(RequestConflict, match="request_id 'r' was already used for different inputs"):
        runtime.jobs.submit(req(config, request_id="r", option="full"))
    assert runtime.store.count(JobState.QUEUED) == 1


def test_concurrent_duplicates_make_one_job(config: ServingConfig) -> None:
    runtime = start(config)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        results.append(runtime.jobs.submit(req(config, request_id="race")).job.id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert runtime.store.count(JobState.QUEUED) == 1


def test_queue_full_is_exact_under_concurrency(config: ServingConfig) -> None:
    runtime = start(config)  # max_queue = 3
    outcomes: list[str] = []
    barrier = threading.Barrier(10)

    def submit() -> None:
        barrier.wait()
        try:
            runtime.jobs.submit(req(config))
            outcomes.append("accepted")
        except QueueFull as exc:
            assert exc.retry_after >= 1 and "queue is full" in str(exc)
            outcomes.append("full")

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("accepted") == 3 and outcomes.count("full") == 7
    # The running job does not count against the bound: one slot frees when the worker takes a job.
    runtime.store.claim_next("w", 30.0)
    runtime.jobs.submit(req(config))
    with pytest.raises(QueueFull):
        runtime.jobs.submit(req(config))


def test_duplicate_is_answered_even_when_queue_is_full(config: ServingConfig) -> None:
    runtime = start(config)
    runtime.jobs.submit(req(config, request_id="keep"))
    runtime.jobs.submit(req(config))
    runtime.jobs.submit(req(config))
    assert runtime.jobs.submit(req(config, request_id="keep")).duplicate


def test_retry_after_follows_recent_job_durations(config: ServingConfig) -> None:
    runtime = start(config)
    assert runtime.jobs.retry_after() == 30  # no history yet
    runtime.jobs.submit(req(config))
    runtime.worker.process_one()
    assert runtime.jobs.retry_after() == 1  # fake jobs take milliseconds; never less than 1 s


def test_shutting_down_refuses_new_jobs(config: ServingConfig) -> None:
    runtime = start(config, start_worker=True)
    runtime.shutdown()
    assert not runtime.ready
    with pytest.raises(NotAccepting):
        runtime.jobs.submit(req(config))


def test_metrics_count_accepted_jobs(config: ServingConfig) -> None:
    registry = CollectorRegistry()
    runtime = start(config, metrics=JobMetrics.create(registry).initialise_labels())
    assert registry.get_sample_value("sadtalker_jobs_accepted_total", {"preset": "full"}) == 0
    runtime.jobs.submit(req(config, option="full"))
    runtime.jobs.submit(req(config, option="full", request_id="x"))
    runtime.jobs.submit(req(config, option="full", request_id="x"))  # duplicate: not a new acceptance
    assert registry.get_sample_value("sadtalker_jobs_accepted_total", {"preset": "full"}) == 2
    assert registry.get_sample_value("sadtalker_queue_depth") == 2


def test_status_and_recent(config: ServingConfig) -> None:
    runtime = start(config)
    a = runtime.jobs.submit(req(config, request_id="a")).job
    b = runtime.jobs.submit(req(config)).job
    runtime.worker.process_one()
    status = runtime.jobs.status(request_id="a")
    assert status.state == "completed" and status.progress == 100.0 and status.option == "crop"
    assert status.render_seconds is not None and status.queued_seconds is not None
    by_job_id = runtime.jobs.status(job_id=b.id)
    assert by_job_id.state == "queued" and by_job_id.queue_position == 1
    with pytest.raises(JobNotFound, match="request_id"):
        runtime.jobs.status(request_id="unknown")
    with pytest.raises(JobNotFound, match="job_id"):
        runtime.jobs.status(job_id="0" * 32)
    # Separate namespaces: a job id is no request_id; a request_id equal to a job id never hides that job.
    with pytest.raises(JobNotFound):
        runtime.jobs.status(request_id=b.id)
    assert [s.job_id for s in runtime.jobs.recent(10)] == [b.id, a.id]
    impostor = runtime.jobs.submit(req(config, request_id=b.id)).job
    assert runtime.jobs.status(job_id=b.id).job_id == b.id
    assert runtime.jobs.status(request_id=b.id).job_id == impostor.id


def test_system_info(config: ServingConfig) -> None:
    runtime = start(config)
    runtime.jobs.submit(req(config))
    info = runtime.system_info()
    assert info.device == "cpu" and info.gpu_name is None and info.models_loaded
    assert info.pipeline == "tests.fakes.FakePipeline"
    assert info.queue_depth == 1 and info.jobs_by_state["queued"] == 1 and info.max_queue == 3


# -- start-up checks -----------------------------------------------------------------------------------------


def test_no_cuda_without_opt_in_refuses_to_start(tmp_path: Path) -> None:
    config = make_config(tmp_path, allow_cpu=False)
    with pytest.raises(StartupError, match="SADTALKER_ALLOW_CPU=1") as info:
        start(config)
    assert "\n" not in str(info.value)
    with pytest.raises(StartupError, match="CUDA GPU not available"):
        preflight(config, cuda_available=lambda: False)


def test_compiling_needs_a_cpp_compiler_and_python_headers(tmp_path: Path, synthetic_checkpoints: Path) -> None:
    """SADTALKER_COMPILE=1 where torch.compile cannot build its kernels (a slim image without Python's headers or
    g++) stops `serve` in one line before any worker loads models; with compiling off there is nothing to check."""
    import torch._inductor.config as inductor_config

    config = dataclasses.replace(make_config(tmp_path, allow_cpu=True), checkpoint_dir=synthetic_checkpoints)
    assert config.compile
    assert preflight(config, cuda_available=lambda: False) == "cpu"  # this machine has both (the suite compiles)
    no_headers = tmp_path / "include"
    no_headers.mkdir()
    with pytest.raises(StartupError, match=r"SADTALKER_COMPILE=1 but Python's C headers are missing") as info:
        check_compile_toolchain(config, python_include=str(no_headers))
    message = str(info.value)
    assert f"{no_headers}/Python.h" in message and "python3.11-dev" in message and "SADTALKER_COMPILE=0" in message
    assert "\n" not in message
    with (
        inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",)}),
        pytest.raises(
            StartupError, match=r"SADTALKER_COMPILE=1 but no C\+\+ compiler for torch.compile .*install g\+\+"
        ),
    ):
        check_compile_toolchain(config)
    eager = dataclasses.replace(config, compile=False)
    check_compile_toolchain(eager, python_include=str(no_headers))  # nothing to build: no error


def test_cuda_is_used_when_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    made_current: list[int] = []
    # This machine has no GPU: pretend two are visible, and record which one the worker makes current.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    config = make_config(tmp_path, allow_cpu=True)
    assert start(config, cuda_available=lambda: True).device == "cuda:0"
    # The second render worker of the server (BentoML worker 2) takes the second GPU, a third has none.
    assert assign_gpu("cuda", 1) == "cuda:1" and made_current == [0, 1]
    with pytest.raises(StartupError, match="SADTALKER_GPUS to at most 2"):
        assign_gpu("cuda", 2)
    # preflight (before BentoML spawns the workers) refuses more workers than GPUs in one line.
    with pytest.raises(StartupError, match="asks for 3 render workers but 2 GPU"):
        preflight(dataclasses.replace(config, gpus=3), cuda_available=lambda: True)
    assert assign_gpu("cpu", 2) == "cpu"


def test_missing_checkpoints_fail_preflight_in_one_line(tmp_path: Path) -> None:
    config = make_config(tmp_path, allow_cpu=True)  # checkpoint_dir does not exist
    with pytest.raises(StartupError) as info:
        preflight(config, cuda_available=lambda: False)
    message = str(info.value)
    assert "\n" not in message
    assert "SadTalker_V0.0.2_256.safetensors" in message and "python -m sadtalker.checkpoints download" in message


def test_synthetic_checkpoints_pass_preflight(tmp_path: Path, synthetic_checkpoints: Path) -> None:
    config = ServingConfig(
        checkpoint_dir=synthetic_checkpoints,
        output_dir=tmp_path / "out",
        state_dir=tmp_path / "state",
        input_dirs=(tmp_path,),
        allow_cpu=True,
    )
    assert preflight(config, cuda_available=lambda: False) == "cpu"


def test_one_line() -> None:
    assert one_line("dir is not usable:\na.bin: 1 problem(s)\n  - missing\nFix: run x") == (
        "dir is not usable: a.bin: 1 problem(s); missing; Fix: run x"
    )


def test_shutdown_counts_the_running_job_among_those_for_the_next_start(
    config: ServingConfig, caplog: pytest.LogCaptureFixture
) -> None:
    # Seen in the container: a CPU frame outlasted the abort wait, the job stayed "running", and the log said 0.
    runtime = start(config)
    runtime.jobs.submit(req(config))
    runtime.jobs.submit(req(config))
    runtime.store.claim_next("stuck", 30.0)  # its render thread never stopped
    with caplog.at_level(logging.INFO, logger="sadtalker.serving"):
        runtime.shutdown()
    assert "shutdown complete; 2 job(s) will run at the next start" in caplog.text


# -- resubmission of failed jobs, full state disk -----------------------------------------------------------------


def test_resubmitting_a_transiently_failed_request_id_queues_a_new_attempt(config: ServingConfig) -> None:
    write_png(config.input_dirs[0] / "fail_face.png")
    pipeline = FakePipeline(render_seconds=0.0)
    runtime = start(config, pipeline=pipeline)
    root = config.input_dirs[0]
    first = runtime.jobs.submit(req(config, request_id="again", source_image=root / "fail_face.png")).job
    assert runtime.worker.process_one().state is JobState.FAILED  # type: ignore[union-attr]
    retried = runtime.jobs.submit(req(config, request_id="again", source_image=root / "fail_face.png"))
    assert not retried.duplicate and retried.job.id == first.id and retried.job.state is JobState.QUEUED
    assert runtime.jobs.status(request_id="again").error is None
    runtime.worker.process_one()
    assert len(pipeline.calls) == 2


def test_resubmitting_a_permanently_failed_request_id_is_409_naming_the_failure(config: ServingConfig) -> None:
    write_png(config.input_dirs[0] / "noface.png")
    runtime = start(config)
    root = config.input_dirs[0]
    runtime.jobs.submit(req(config, request_id="faceless", source_image=root / "noface.png"))
    runtime.worker.process_one()
    with pytest.raises(RequestConflict, match="failed for good .*no_face: source_image: noface.png: no face"):
        runtime.jobs.submit(req(config, request_id="faceless", source_image=root / "noface.png"))
    assert runtime.store.count(JobState.QUEUED) == 0


def test_full_state_disk_is_store_full_not_a_crash(config: ServingConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    runtime = start(config)

    def full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(runtime.store, "insert", full)
    with pytest.raises(StoreFull, match="state disk is full or read-only"):
        runtime.jobs.submit(req(config))


def test_corrupt_database_fails_preflight_in_one_line(tmp_path: Path) -> None:
    config = make_config(tmp_path, allow_cpu=True, pipeline_factory="tests.fakes:create")
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.database_path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StartupError) as info:
        preflight(config, cuda_available=lambda: False)
    message = str(info.value)
    assert "\n" not in message and str(config.database_path) in message and "move" in message


def test_output_name_taken_by_another_server_between_check_and_insert_is_redrawn(
    config: ServingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers on one database can draw the same name in the same second: the loser draws again (no 500)."""
    import serving.jobs

    runtime = start(config)
    taken = runtime.jobs.submit(req(config)).job.output_path
    # The other server inserted `taken` after our reservation check: the check says free, the insert refuses.
    monkeypatch.setattr(runtime.store, "is_output_reserved", lambda _path: False)
    draws = iter([taken, taken, config.output_dir / "20260101-000000_0000abcd.mp4"])
    monkeypatch.setattr(serving.jobs, "allocate_output_path", lambda *_args, **_kwargs: next(draws))
    job = runtime.jobs.submit(req(config)).job
    assert job.output_path == config.output_dir / "20260101-000000_0000abcd.mp4"
    assert runtime.store.count(JobState.QUEUED) == 2
    # Never more than OUTPUT_NAME_ATTEMPTS draws: a store that refuses every name ends in one clear error.
    monkeypatch.setattr(serving.jobs, "allocate_output_path", lambda *_args, **_kwargs: taken)
    with pytest.raises(RuntimeError, match="no free output name"):
        runtime.jobs.submit(req(config))
    assert runtime.store.count(JobState.QUEUED) == 2


def test_status_and_recent_while_postgres_is_unreachable_are_store_unavailable(
    config: ServingConfig, postgres_url: str
) -> None:
    """A dropped database session makes /status, /jobs and /video answer 503 (StoreUnavailable), not a bare 500;
    the next read reconnects."""
    import psycopg

    from serving.store import StoreUnavailable

    runtime = start(dataclasses.replace(config, database_url=postgres_url))
    job = runtime.jobs.submit(req(config, request_id="pg-down")).job

    def drop_sessions() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )

    drop_sessions()
    with pytest.raises(StoreUnavailable, match="cannot reach its job database"):
        runtime.jobs.status(request_id="pg-down")
    assert runtime.jobs.status(job_id=job.id).request_id == "pg-down"  # reconnected
    drop_sessions()
    with pytest.raises(StoreUnavailable, match="retry later"):
        runtime.jobs.recent(5)
    assert [status.job_id for status in runtime.jobs.recent(5)] == [job.id]
    # A job-store error that is not about reaching the database stays what it is.
    with pytest.raises(JobNotFound):
        runtime.jobs.status(request_id="never-submitted")
