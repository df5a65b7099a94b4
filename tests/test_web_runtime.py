"""In-process: the service wiring of issue 15 (spool as an input root, start-up sweep, job-finished hook)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from test_serving_validation import make_config, write_png, write_wav

from serving.config import ServingConfig
from serving.metrics import JobMetrics
from serving.runtime import Runtime
from serving.schema import GenerateRequest
from serving.store import JobState
from serving.uploads import spool_root
from serving.validation import RequestInvalid
from serving.webapp import WebContext, WebSettings
from tests.fakes import FakePipeline


def spooled(root: Path, name: str) -> tuple[Path, Path]:
    (root / name).mkdir(parents=True)
    return write_png(root / name / "source_image.png"), write_wav(root / name / "driven_audio.wav")


def web_runtime(config: ServingConfig) -> tuple[WebContext, Runtime]:
    """What the service builds: the upload context and a runtime (fake pipeline) whose worker is not started."""
    web = WebContext.create(config, WebSettings())
    runtime = Runtime.start(
        config,
        pipeline=FakePipeline(render_seconds=0.0),
        metrics=JobMetrics.create(CollectorRegistry()),
        validator=web.validator(),
        extra_input_roots=web.extra_input_roots,
        start_worker=False,
        cuda_available=lambda: False,
    )
    return web, runtime


def test_spool_jobs_run_and_their_files_go_whatever_the_outcome(tmp_path: Path) -> None:
    config = make_config(tmp_path, allow_cpu=True)
    root = spool_root(config)
    web, runtime = web_runtime(config)
    ok_image, ok_audio = spooled(root, "ok")
    bad_image, bad_audio = spooled(root, "bad")
    shutil.move(bad_image, bad_image.with_name("fail.png"))  # the fake fails on "fail" in the file name
    for image, audio in ((ok_image, ok_audio), (bad_image.with_name("fail.png"), bad_audio)):
        request = GenerateRequest(source_image=str(image), driven_audio=str(audio), option="crop")
        with pytest.raises(RequestInvalid, match="outside the allowed input directories"):
            runtime.jobs.submit(request)  # /generate's validator: the spool is not an input root
        runtime.jobs.submit(request, validator=web.for_uploads())
    orphan_image, _ = spooled(root, "orphan")  # a spool dir without a job: a crash between spooling and submit
    (root / "incoming-deadbeef").mkdir()

    web.attach(runtime)  # what the service does before starting the worker
    assert sorted(p.name for p in root.iterdir()) == ["bad", "ok"]  # the waiting jobs keep their files

    first = runtime.worker.process_one()
    assert first is not None and first.state is JobState.COMPLETED and not (root / "ok").exists()
    second = runtime.worker.process_one()
    assert second is not None and second.state is JobState.FAILED and list(root.iterdir()) == []
    assert not orphan_image.exists()


def test_requeued_jobs_keep_their_upload_and_only_jobs_that_end_release_it(tmp_path: Path) -> None:
    """Leases: a job whose worker died is requeued and renders again from the same spooled files; a job
    interrupted too often is failed by recovery and its files go; a job that another worker owns is left alone."""
    config = make_config(tmp_path, allow_cpu=True, max_attempts=2)
    root = spool_root(config)
    web, runtime = web_runtime(config)
    web.attach(runtime)
    store, worker = runtime.store, runtime.worker
    submitted = {}
    for name in ("crashed", "live"):
        image, audio = spooled(root, name)
        request = GenerateRequest(source_image=str(image), driven_audio=str(audio), option="crop")
        submitted[name] = runtime.jobs.submit(request, validator=web.for_uploads()).job
    # "crashed" is claimed by a worker that died (its lease already expired); "live" by another server on this
    # state directory whose lease runs.
    assert store.claim_next("dead-worker", lease_seconds=-1).id == submitted["crashed"].id
    assert store.claim_next("other-server", lease_seconds=3600).id == submitted["live"].id

    report = worker.recover()  # "crashed" goes back to the queue (attempt 1 of 2): it keeps its files
    assert report.requeued == (submitted["crashed"].id,) and (root / "crashed").is_dir()
    web.attach(runtime)  # a restart's sweep keeps queued jobs and live running ones
    assert sorted(p.name for p in root.iterdir()) == ["crashed", "live"]

    # The requeued job dies again mid-render: recovery fails it for good, and only then its files go.
    assert store.claim_next("dead-worker", lease_seconds=-1).id == submitted["crashed"].id
    report = worker.recover()
    assert report.abandoned == (submitted["crashed"].id,)
    assert store.get(submitted["crashed"].id).state is JobState.FAILED
    assert sorted(p.name for p in root.iterdir()) == ["live"]
    assert worker.process_one() is None  # nothing queued; the live job is the other server's
    assert (root / "live").is_dir()
