"""A state disk that fills up under a real `bentoml serve` (issue 12, item 2): no job is stranded `running`.

The state directory is a small tmpfs mounted for the test (root only: CI runs as root; elsewhere the test skips
saying why). While a long job renders, the disk is filled to the last byte: new submissions must answer 503 with
a message, the running job's progress writes are skipped, its render fails (it cannot write its temp files) and
its final write is retried until space is back — then the job ends `failed` with the cause (or, when the render
needed no disk, `completed` with its video kept), the service takes new jobs again, and `output/` holds no partial
file.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_service_http import Dirs, body, launch, post, server_env, wait_ready, wait_state

TMPFS_BYTES = 16 * 2**20


@pytest.fixture
def small_state_disk(tmp_path: Path) -> Iterator[Dirs]:
    dirs = Dirs.make(tmp_path)
    dirs.state.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the state disk needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(dirs.state)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); CI machines can")
    try:
        yield dirs
    finally:
        subprocess.run(["umount", "-l", str(dirs.state)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk refuses another byte; returns it (delete it to free the disk)."""
    filler = directory / "filler"
    chunk = b"\0" * 2**16
    with open(filler, "wb", buffering=0) as sink:
        while True:
            try:
                sink.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        for size in (4096, 512, 1):  # the last pages too: nothing may fit afterwards
            while True:
                try:
                    sink.write(b"\0" * size)
                except OSError:
                    break
    return filler


@pytest.mark.slow  # ~45 s each (8 s renders, a disk held full for 9 s, a server start); logic: test_serving_worker
@pytest.mark.parametrize(
    ("render_needs_disk", "outcome"),
    [
        pytest.param(True, "failed", id="render-writes-scratch"),  # its temp files fail: failed, with the cause
        pytest.param(False, "completed", id="render-needs-no-disk"),  # only bookkeeping fails: the video stays
    ],
)
def test_state_disk_filling_mid_render_strands_no_job(
    small_state_disk: Dirs, render_needs_disk: bool, outcome: str
) -> None:
    dirs = small_state_disk
    env = server_env(
        dirs,
        SADTALKER_FAKE_RENDER_SECONDS="8",
        SADTALKER_FAKE_TICKS="20",
        SADTALKER_FAKE_SCRATCH="1" if render_needs_disk else "0",
    )
    server = launch(dirs, env, "full-disk")
    try:
        wait_ready(server)
        assert post(server, "/generate", body(dirs, request_id="long")).text == "1"
        running = wait_state(server, "long", {"running"})
        output = Path(running["output_path"])
        time.sleep(1.0)  # a few progress writes land first
        filler = fill(dirs.state)

        refused = post(server, "/generate", body(dirs, request_id="while-full"))
        assert refused.status_code == 503, refused.text
        assert "state disk is full or read-only" in refused.json()["error"]
        assert refused.headers["Retry-After"]
        assert post(server, "/status", {"request_id": "while-full"}).status_code == 404  # nothing was queued
        # Reads still work on a full disk: the job is visible (still running, or retrying its final write).
        assert post(server, "/status", {"request_id": "long"}).json()["state"] == "running"

        # Full until the render has ended (8 s).
        time.sleep(9.0)
        if render_needs_disk:
            # Its failure is recorded by a write that is retried with backoff, until space is back.
            assert post(server, "/status", {"request_id": "long"}).json()["state"] == "running"
            assert "fail write failed (database or disk is full); retrying in" in server.output()
        # (A render that needed no disk frees its input snapshot when it ends: its completion may land at once.)
        filler.unlink()

        ended = wait_state(server, "long", {"failed", "completed", "queued"}, timeout=90)
        assert ended["state"] == outcome, ended
        if render_needs_disk:
            assert "No space left on device" in ended["error"], ended
            assert not output.exists()
        else:
            assert "progress write skipped (OperationalError: database or disk is full)" in server.output()
            assert output.is_file()  # a finished video is never lost to a bookkeeping failure

        # Space is back: the service takes and renders new jobs.
        assert post(server, "/generate", body(dirs, request_id="after")).text == "1"
        done = wait_state(server, "after", {"completed", "failed"}, timeout=60)
        assert done["state"] == "completed", done
        videos = sorted(path.name for path in dirs.output.iterdir())  # no partial file either
        assert videos == sorted(Path(job["output_path"]).name for job in (done, ended) if job["state"] == "completed")
    finally:
        code = server.stop()
    assert code == 0, server.output()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/livez", timeout=2)
