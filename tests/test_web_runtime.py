"""In-process: the service wiring of issue 15 (spool as an input root, start-up sweep, job-finished hook)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from test_serving_validation import make_config, write_png, write_wav

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


def test_spool_jobs_run_and_their_files_go_whatever_the_outcome(tmp_path: Path) -> None:
    config = make_config(tmp_path, allow_cpu=True)
    root = spool_root(config)
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
