"""The HTTP contract against a real `bentoml serve service:SadTalkerService` process.

Rendering uses the test-only fake pipeline (SADTALKER_PIPELINE_FACTORY=tests.fakes:create), so
these tests check the service, not the models: status codes, bodies, files, restart and shutdown.
Every server gets its own BENTOML_HOME (BentoML clears its Prometheus directory at start-up).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from test_serving_validation import write_png, write_wav

from serving.naming import OUTPUT_NAME_PATTERN

REPO = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).with_name("bentoml")
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Dirs:
    root: Path
    inputs: Path
    output: Path
    state: Path

    @classmethod
    def make(cls, root: Path) -> Dirs:
        dirs = cls(root, root / "inputs", root / "output", root / "state")
        dirs.inputs.mkdir(parents=True, exist_ok=True)
        write_png(dirs.inputs / "face.png")
        write_png(dirs.inputs / "fail_face.png")  # the fake pipeline fails on names containing "fail" ...
        write_png(dirs.inputs / "noface.png")  # ... and finds no face in names containing "noface"
        write_wav(dirs.inputs / "speech.wav", 1.0)
        write_wav(dirs.inputs / "long.wav", 3.0)
        (dirs.inputs / "junk.png").write_bytes(b"not an image" * 20)
        return dirs


def server_env(dirs: Dirs, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SADTALKER_", "PROMETHEUS_"))}
    env.update(
        {
            "BENTOML_HOME": str(dirs.root / "bentoml_home"),
            "BENTOML_DO_NOT_TRACK": "True",
            "SADTALKER_ALLOW_CPU": "1",
            # Servers with the real pipeline (slow tests) skip compilation: minutes on 2 cores, and jobs run the
            # same networks eagerly (tests/test_speed.py covers the compiled path).
            "SADTALKER_COMPILE": "0",
            "SADTALKER_PIPELINE_FACTORY": "tests.fakes:create",
            "SADTALKER_FAKE_RENDER_SECONDS": "0.3",
            "SADTALKER_INPUT_DIRS": str(dirs.inputs),
            "SADTALKER_OUTPUT_DIR": str(dirs.output),
            "SADTALKER_STATE_DIR": str(dirs.state),
            "SADTALKER_MAX_AUDIO_SECONDS": "2",
            "SADTALKER_SHUTDOWN_GRACE": "1",
            "SADTALKER_FAKE_CALLS_LOG": str(dirs.root / "renders.log"),
        }
    )
    env.update(overrides)
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


def launch(
    dirs: Dirs, env: dict[str, str], name: str, target: str = "service:SadTalkerService", cwd: Path = REPO
) -> Server:
    """`bentoml serve TARGET` (the project's service, or a built Bento's directory as its image does)."""
    port = free_port()
    log = dirs.root / f"{name}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [str(BENTOML), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as under a supervisor (and killpg-able in tests)
        )
    return Server(process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise AssertionError(f"server not ready after {START_TIMEOUT}s:\n{server.output()}")


def post(server: Server, route: str, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=timeout)


def renders(dirs: Dirs) -> list[str]:
    """Output names of every render the fake pipeline started, across all server processes on ``dirs``."""
    log = dirs.root / "renders.log"
    return [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []


def metric_values(server: Server) -> dict[str, float]:
    values = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=30).text.splitlines():
        if line.startswith("sadtalker_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def wait_state(server: Server, key: str, states: set[str], timeout: float = 30, by: str = "request_id") -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        response = post(server, "/status", {by: key})
        if response.status_code == 200:
            status = response.json()
            if status["state"] in states:
                return status
        time.sleep(0.2)
    raise AssertionError(f"job {key} did not reach {states}: {status}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Dirs]]:
    dirs = Dirs.make(tmp_path_factory.mktemp("served"))
    server = launch(dirs, server_env(dirs), "served")
    wait_ready(server)
    yield server, dirs
    code = server.stop()
    assert code == 0, server.output()


def body(dirs: Dirs, **extra: object) -> dict:
    return {
        "source_image": str(dirs.inputs / "face.png"),
        "driven_audio": str(dirs.inputs / "speech.wav"),
        "option": "crop",
    } | extra


# -- one shared server -----------------------------------------------------------------------------------------


def test_valid_request_returns_1_and_the_video_appears(served: tuple[Server, Dirs]) -> None:
    server, dirs = served
    response = post(server, "/generate", body(dirs, request_id="first"))
    assert response.status_code == 200, response.text
    assert response.text == "1" and response.headers["content-type"].startswith("text/plain")
    output = Path(response.headers["x-sadtalker-output"])
    status = wait_state(server, "first", {"completed", "failed"})
    assert status["state"] == "completed" and status["progress"] == 100.0 and status["error"] is None
    assert status["job_id"] == response.headers["x-sadtalker-job-id"]
    assert Path(status["output_path"]) == output and output.parent == dirs.output
    assert OUTPUT_NAME_PATTERN.fullmatch(output.name) and output.is_file()
    assert [p.name for p in dirs.output.iterdir() if p.name.startswith(".")] == []  # no partial files
    assert list((dirs.state / "tmp").iterdir()) == []  # the job's temp dir is gone


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"source_image": "{inputs}/missing.png"}, "source_image", "file not found"),
        ({"source_image": "{inputs}"}, "source_image", "is a directory"),
        ({"source_image": "/etc/hostname"}, "source_image", "outside the allowed input directories"),
        ({"source_image": "{inputs}/../escape.png"}, "source_image", "outside the allowed input directories"),
        ({"source_image": "{inputs}/junk.png"}, "source_image", "cannot be used as an image"),
        ({"driven_audio": "{inputs}/long.wav"}, "driven_audio", "the limit is 2 s"),
        ({"driven_audio": "{inputs}/face.png"}, "driven_audio", "cannot be used as audio"),
        ({"driven_audio": "speech.wav"}, "driven_audio", "absolute"),
        ({"landmarks": [[1, 2]] * 68 + [[3, 4]]}, "landmarks", None),
        ({"option": "resize"}, "option", None),
        ({"ref_pose": "{inputs}/speech.wav"}, "ref_pose", "not a readable video"),
        ({"ref_eyeblink": "/etc/hostname"}, "ref_eyeblink", "outside the allowed input directories"),
        ({"input_yaw": ["10"]}, "input_yaw", None),
        ({"input_roll": [400]}, "input_roll", None),
        ({"preprocess": "extcrop"}, "preprocess", None),
    ],
)
def test_bad_input_is_400_naming_the_field(
    served: tuple[Server, Dirs], change: dict, field: str, reason: str | None
) -> None:
    server, dirs = served
    change = {k: v.format(inputs=dirs.inputs) if isinstance(v, str) else v for k, v in change.items()}
    before = post(server, "/jobs", {"limit": 500}).json()
    response = post(server, "/generate", body(dirs, **change))
    assert response.status_code == 400, response.text
    error = response.json()
    if reason is None:  # schema errors: BentoML's pydantic report, with the field in `loc`
        assert error["detail"][0]["loc"][0] == field
    else:
        assert error["field"] == field and error["error"].startswith(f"{field}: ") and reason in error["error"]
    assert post(server, "/jobs", {"limit": 500}).json() == before  # nothing queued


def test_motion_controls_are_accepted_and_rendered(served: tuple[Server, Dirs]) -> None:
    from test_serving_motion import write_video

    server, dirs = served
    write_video(dirs.inputs / "nod.mp4", frames=4)
    motion = {"ref_pose": str(dirs.inputs / "nod.mp4"), "input_yaw": [-20, 20], "input_pitch": [5]}
    response = post(server, "/generate", body(dirs, request_id="motion", **motion))
    assert (response.status_code, response.text) == (200, "1"), response.text
    assert wait_state(server, "motion", {"completed", "failed"})["state"] == "completed"
    again = post(server, "/generate", body(dirs, request_id="motion", **motion))  # same inputs: same job
    assert again.headers["x-sadtalker-job-id"] == response.headers["x-sadtalker-job-id"]
    other = post(server, "/generate", body(dirs, request_id="motion", **motion | {"input_yaw": [-10, 10]}))
    assert other.status_code == 409 and other.json()["field"] == "request_id"  # the angles are part of the inputs


def test_duplicate_request_id_renders_once_and_conflict_is_409(served: tuple[Server, Dirs]) -> None:
    server, dirs = served
    first = post(server, "/generate", body(dirs, request_id="twice"))
    second = post(server, "/generate", body(dirs, request_id="twice"))
    assert (first.status_code, first.text, second.status_code, second.text) == (200, "1", 200, "1")
    assert first.headers["x-sadtalker-job-id"] == second.headers["x-sadtalker-job-id"]
    wait_state(server, "twice", {"completed"})
    jobs = post(server, "/jobs", {"limit": 500}).json()
    assert [job["request_id"] for job in jobs].count("twice") == 1
    conflict = post(server, "/generate", body(dirs, request_id="twice", option="full"))
    assert conflict.status_code == 409 and conflict.json()["field"] == "request_id"


def test_failed_job_is_reported_and_next_job_runs(served: tuple[Server, Dirs]) -> None:
    server, dirs = served
    bad = body(dirs, request_id="bad", source_image=str(dirs.inputs / "fail_face.png"))
    assert post(server, "/generate", bad).text == "1"
    assert post(server, "/generate", body(dirs, request_id="after-bad")).text == "1"
    failed = wait_state(server, "bad", {"completed", "failed"})
    assert failed["state"] == "failed" and failed["error_kind"] == "render" and "fake failure" in failed["error"]
    assert not Path(failed["output_path"]).exists()
    assert wait_state(server, "after-bad", {"completed", "failed"})["state"] == "completed"
    log = server.output()
    assert f"job={failed['job_id']} request_id=bad failed (render)" in log and "Traceback" in log


def test_status_of_unknown_job_is_404(served: tuple[Server, Dirs]) -> None:
    server, _ = served
    response = post(server, "/status", {"request_id": "never-submitted"})
    assert response.status_code == 404 and "never-submitted" in response.json()["error"]


def test_sync_client_accepts_path_and_str(served: tuple[Server, Dirs]) -> None:
    import bentoml
    from bentoml.exceptions import BentoMLException

    from serving.client import SadTalkerClient

    server, dirs = served
    # The stock client: str paths (it JSON-encodes arguments with json.dumps, which rejects Path).
    with bentoml.SyncHTTPClient(server.url, timeout=60) as client:
        result = client.generate(
            driven_audio=str(dirs.inputs / "speech.wav"),
            source_image=str(dirs.inputs / "face.png"),
            option="crop",
            request_id="client-str",
        )
        assert result == "1"
        with pytest.raises(TypeError, match="PosixPath is not JSON serializable"):
            client.generate(driven_audio=dirs.inputs / "speech.wav", source_image="/x", option="crop")
    # Our subclass of it also takes pathlib.Path (and still str).
    with SadTalkerClient(server.url, timeout=60) as client:
        assert isinstance(client, bentoml.SyncHTTPClient)
        result = client.generate(
            driven_audio=dirs.inputs / "speech.wav",
            source_image=str(dirs.inputs / "face.png"),
            option="full",
            request_id="client-path",
        )
        assert result == "1"
        with pytest.raises(BentoMLException) as info:
            client.generate(driven_audio=dirs.inputs / "nope.wav", source_image=dirs.inputs / "face.png", option="crop")
        assert info.value.error_code == 400 and "driven_audio: file not found" in str(info.value)
        assert client.status(request_id="client-path")["option"] == "full"
    for key in ("client-path", "client-str"):
        assert wait_state(server, key, {"completed", "failed"})["state"] == "completed"


def test_client_example_submits_and_follows_status(served: tuple[Server, Dirs]) -> None:
    from serving.client import JobFailed, SadTalkerClient, generate_and_wait

    server, dirs = served
    seen: list[str] = []
    with SadTalkerClient(server.url, timeout=60) as client:
        status = generate_and_wait(
            client,
            source_image=dirs.inputs / "face.png",
            driven_audio=dirs.inputs / "speech.wav",
            option="full",
            poll_seconds=0.1,
            timeout_seconds=60,
            on_status=lambda s: seen.append(s["state"]),
        )
        assert status["state"] == "completed" and Path(status["output_path"]).is_file()
        assert seen[-1] == "completed"
        with pytest.raises(JobFailed, match="failed"):
            generate_and_wait(
                client,
                source_image=dirs.inputs / "fail_face.png",
                driven_audio=dirs.inputs / "speech.wav",
                option="crop",
                poll_seconds=0.1,
                timeout_seconds=60,
            )


def test_metrics_count_exactly_what_happened(served: tuple[Server, Dirs]) -> None:
    server, dirs = served
    before = metric_values(server)
    assert post(server, "/generate", body(dirs, request_id="metered")).text == "1"
    failing = body(dirs, request_id="metered-fail", source_image=str(dirs.inputs / "fail_face.png"))
    assert post(server, "/generate", failing).text == "1"
    wait_state(server, "metered", {"completed"})
    wait_state(server, "metered-fail", {"failed"})
    after = metric_values(server)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('sadtalker_jobs_accepted_total{preset="crop"}') == 2
    assert delta('sadtalker_jobs_completed_total{preset="crop",worker="0"}') == 1
    assert delta('sadtalker_jobs_failed_total{kind="render",preset="crop",worker="0"}') == 1
    # Frames as written: the fake writes 25 per video (SADTALKER_FAKE_FRAMES), and the failed job fails at its
    # middle tick (5 of 10) having written 25 * 5 // 10 = 12 of them, which count too.
    assert delta('sadtalker_frames_rendered_total{preset="crop",worker="0"}') == 25 + 12
    assert after["sadtalker_queue_depth"] == 0
    assert delta('sadtalker_job_seconds_bucket{le="3600.0",outcome="completed",preset="crop",worker="0"}') == 1
    assert any(name.startswith("sadtalker_stage_seconds_count") for name in after)


def test_request_hygiene_415_413_and_strict_landmarks(served: tuple[Server, Dirs]) -> None:
    server, dirs = served
    form = httpx.post(f"{server.url}/generate", data={"source_image": "x", "driven_audio": "y", "option": "crop"})
    assert form.status_code == 415 and "application/json" in form.json()["error"]
    huge = httpx.post(
        f"{server.url}/generate",
        content=b'{"pad": "' + b"x" * (1 << 20) + b'"}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert huge.status_code == 413 and "limit" in huge.json()["error"]
    strings = post(server, "/generate", body(dirs, landmarks=[["1", "2"]] * 68))
    assert strings.status_code == 400 and strings.json()["detail"][0]["loc"][0] == "landmarks"
    log = server.output()
    # A client error is one WARNING line, without a traceback.
    lines = [line for line in log.splitlines() if "client error on /generate [POST], answered 4xx" in line]
    assert lines and all("[WARNING]" in line for line in lines)
    assert "Exception on /generate" not in log


def test_request_id_equal_to_a_job_id_does_not_hide_it(served: tuple[Server, Dirs]) -> None:
    server, dirs = served
    victim = post(server, "/generate", body(dirs))
    job_id = victim.headers["x-sadtalker-job-id"]
    assert post(server, "/generate", body(dirs, request_id=job_id, option="full")).text == "1"
    by_job_id = wait_state(server, job_id, {"completed"}, by="job_id")
    by_request_id = wait_state(server, job_id, {"completed"})
    assert by_job_id["job_id"] == job_id and by_job_id["option"] == "crop"
    assert by_request_id["job_id"] != job_id and by_request_id["option"] == "full"
    both = post(server, "/status", {"request_id": "x", "job_id": job_id})
    assert both.status_code == 400


def test_resubmitted_failed_request_ids(served: tuple[Server, Dirs]) -> None:
    server, dirs = served
    transient = body(dirs, request_id="try-again", source_image=str(dirs.inputs / "fail_face.png"))
    first = post(server, "/generate", transient)
    wait_state(server, "try-again", {"failed"})
    output = Path(first.headers["x-sadtalker-output"]).name
    again = post(server, "/generate", transient)
    assert (again.status_code, again.text) == (200, "1")
    assert again.headers["x-sadtalker-job-id"] == first.headers["x-sadtalker-job-id"]
    wait_state(server, "try-again", {"failed"})
    assert renders(dirs).count(output) == 2  # rendered again, not a silent no-op

    permanent = body(dirs, request_id="no-face", source_image=str(dirs.inputs / "noface.png"))
    assert post(server, "/generate", permanent).text == "1"
    failed = wait_state(server, "no-face", {"failed"})
    assert failed["error_kind"] == "no_face"
    refused = post(server, "/generate", permanent)
    assert refused.status_code == 409 and "no_face" in refused.json()["error"]
    assert renders(dirs).count(Path(failed["output_path"]).name) == 1


def test_forged_newline_in_a_file_name_stays_on_one_log_line(served: tuple[Server, Dirs]) -> None:
    server, dirs = served
    evil = dirs.inputs / "evil\n2026-01-01T00:00:00+0000 [ERROR] forged.png"
    evil.write_bytes((dirs.inputs / "face.png").read_bytes())
    assert post(server, "/generate", body(dirs, request_id="evil", source_image=str(evil))).text == "1"
    wait_state(server, "evil", {"completed"})
    log = server.output()
    assert "forged.png" in log and not any(line.startswith("2026-01-01T00:00:00+0000") for line in log.splitlines())
    assert "evil\\n2026-01-01" in log  # escaped, as repr() writes it


def test_system_info_and_jobs(served: tuple[Server, Dirs]) -> None:
    server, _ = served
    info = post(server, "/system_info", {}).json()
    assert info["device"] == "cpu" and info["models_loaded"] and info["accepting"]
    assert info["pipeline"] == "tests.fakes.FakePipeline"
    assert set(info["jobs_by_state"]) == {"queued", "running", "completed", "failed"}
    jobs = post(server, "/jobs", {"limit": 2}).json()
    assert len(jobs) <= 2
    assert post(server, "/jobs", {"limit": 0}).status_code == 400


def test_openapi_shows_paths_as_strings(served: tuple[Server, Dirs]) -> None:
    server, _ = served
    schema = httpx.get(f"{server.url}/docs.json", timeout=30).json()
    request_body = schema["paths"]["/generate"]["post"]["requestBody"]["content"]
    assert list(request_body) == ["application/json"]  # not multipart: nothing is uploaded
    body_schema = request_body["application/json"]["schema"]
    if "$ref" in body_schema:
        body_schema = schema["components"]["schemas"][body_schema["$ref"].rsplit("/", 1)[-1]]
    properties = body_schema["properties"]
    assert properties["source_image"]["type"] == properties["driven_audio"]["type"] == "string"
    assert sorted(properties["option"]["enum"]) == ["crop", "full"]  # order: sadtalker.options.Preset


# -- start-up failures -----------------------------------------------------------------------------------------


def run_until_exit(dirs: Dirs, env: dict[str, str], name: str, timeout: float = 90) -> tuple[int, str, float]:
    begin = time.monotonic()
    server = launch(dirs, env, name)
    try:
        code = server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        server.stop()
        raise AssertionError(f"server did not exit:\n{server.output()}") from None
    return code, server.output(), time.monotonic() - begin


def test_without_cuda_and_without_opt_in_serve_exits_nonzero(tmp_path: Path) -> None:
    dirs = Dirs.make(tmp_path)
    env = server_env(dirs)
    del env["SADTALKER_ALLOW_CPU"]
    code, output, seconds = run_until_exit(dirs, env, "nocuda")
    assert code != 0, output
    assert "CUDA GPU not available" in output and "SADTALKER_ALLOW_CPU=1" in output
    assert "Traceback" not in output
    assert seconds < 60  # within seconds, not a worker crash loop (generous: shared 2-CPU machine)


@pytest.mark.slow  # ~20 s on a loaded 2-CPU machine; the in-process preflight test covers the logic
def test_missing_checkpoints_serve_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    dirs = Dirs.make(tmp_path)
    env = server_env(dirs, SADTALKER_CHECKPOINTS=str(tmp_path / "no_checkpoints"))
    del env["SADTALKER_PIPELINE_FACTORY"]  # the real pipeline: checkpoints are verified before workers start
    code, output, _ = run_until_exit(dirs, env, "nockpt")
    assert code != 0, output
    line = next(line for line in output.splitlines() if "SadTalker cannot start" in line)
    assert "SadTalker_V0.0.2_256.safetensors" in line and "python -m sadtalker.checkpoints download" in line
    assert "Traceback" not in output


def test_corrupt_database_stops_serve_with_one_line(tmp_path: Path) -> None:
    dirs = Dirs.make(tmp_path)
    dirs.state.mkdir(parents=True)
    database = dirs.state / "jobs.sqlite3"
    database.write_bytes(os.urandom(64 * 1024))
    code, output, seconds = run_until_exit(dirs, server_env(dirs), "corrupt")
    assert code == 1, output
    lines = [line for line in output.splitlines() if "SadTalker cannot start" in line]
    assert len(lines) == 1 and str(database) in lines[0] and "move" in lines[0] and "jobs are lost" in lines[0]
    assert "Traceback" not in output
    assert seconds < 30  # fails before any worker starts: no restart loop


def test_invalid_env_value_serve_exits_nonzero(tmp_path: Path) -> None:
    dirs = Dirs.make(tmp_path)
    code, output, _ = run_until_exit(dirs, server_env(dirs, SADTALKER_MAX_QUEUE="lots"), "badenv")
    assert code != 0 and "SADTALKER_MAX_QUEUE='lots' is not an integer" in output and "Traceback" not in output


# -- queue full, SIGTERM mid-job, restart ------------------------------------------------------------------------


@pytest.mark.slow
def test_queue_full_then_sigterm_mid_job_then_restart_completes(tmp_path: Path) -> None:
    dirs = Dirs.make(tmp_path)
    # The render checks in every 30 s: less often than the 10 s abort wait, like a real CPU batch with GFPGAN.
    slow = server_env(
        dirs,
        SADTALKER_FAKE_RENDER_SECONDS="60",
        SADTALKER_FAKE_TICKS="2",
        SADTALKER_MAX_QUEUE="1",
        SADTALKER_SHUTDOWN_GRACE="1",
    )
    server = launch(dirs, slow, "slow")
    wait_ready(server)
    try:
        assert post(server, "/generate", body(dirs, request_id="running")).text == "1"
        wait_state(server, "running", {"running"})
        assert post(server, "/generate", body(dirs, request_id="waiting")).text == "1"
        full = post(server, "/generate", body(dirs, request_id="rejected"))
        assert full.status_code == 429 and "queue is full" in full.json()["error"]
        assert int(full.headers["retry-after"]) >= 1
        assert post(server, "/status", {"request_id": "rejected"}).status_code == 404  # nothing recorded
        # Exactly one job waits (the running one is not queued, the rejected one was never recorded).
        assert metric_values(server)["sadtalker_queue_depth"] == 1

        begin = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(60)
        assert code == 0, server.output()
        assert time.monotonic() - begin < 40  # grace 1 s + abort + BentoML's own shutdown
    finally:
        server.stop()
    # The render never reached a stop check: shutdown requeued the job itself (a graceful interruption, no attempt).
    assert "render thread did not stop within 10s: requeueing job=" in server.output()
    assert list(dirs.output.iterdir()) == []  # no partial video

    # The restart also moves the output directory: queued jobs are written where the server writes now.
    moved = tmp_path / "output-after-restart"
    restarted = launch(
        dirs, server_env(dirs, SADTALKER_FAKE_RENDER_SECONDS="0.3", SADTALKER_OUTPUT_DIR=str(moved)), "restarted"
    )
    wait_ready(restarted)
    try:
        done = [wait_state(restarted, key, {"completed", "failed"}) for key in ("running", "waiting")]
        assert [job["state"] for job in done] == ["completed", "completed"]
        assert [job["attempts"] for job in done] == [1, 1]  # the graceful interruption was no attempt
        assert done[0]["finished_at"] <= done[1]["started_at"]  # still in submission order
        assert all(Path(job["output_path"]).parent == moved for job in done)
        assert sorted(p.name for p in moved.iterdir()) == sorted(Path(j["output_path"]).name for j in done)
        assert list(dirs.output.iterdir()) == []
        assert list((dirs.state / "tmp").iterdir()) == []
        assert json.loads(post(restarted, "/system_info", {}).text)["jobs_by_state"]["completed"] == 2
    finally:
        assert restarted.stop() == 0


# -- several servers on one state directory ---------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def is_descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


@pytest.mark.slow
def test_two_servers_and_an_orphaned_worker_never_render_a_job_twice(tmp_path: Path) -> None:
    """A second server on the same state dir shares the queue; a worker that outlives kill -9 keeps its job."""
    dirs = Dirs.make(tmp_path)
    long = {"SADTALKER_FAKE_RENDER_SECONDS": "10", "SADTALKER_FAKE_TICKS": "50", "SADTALKER_LEASE_SECONDS": "2"}
    # Two servers on one state directory (a rolling restart on a shared volume), started together.
    servers = [
        launch(dirs, server_env(dirs, BENTOML_HOME=str(tmp_path / f"home{n}"), **long), f"server{n}") for n in (1, 2)
    ]
    orphan: int | None = None
    try:
        for server in servers:
            wait_ready(server)
        first, second = servers
        assert post(first, "/generate", body(dirs, request_id="a")).text == "1"
        job_a = wait_state(first, "a", {"running"})
        assert post(first, "/generate", body(dirs, request_id="b", option="full")).text == "1"
        job_b = wait_state(first, "b", {"running"}, timeout=15)  # the other server's worker takes it
        assert job_a["worker"] != job_b["worker"]
        temp = dirs.state / "tmp"
        assert (temp / job_a["job_id"]).is_dir() and (temp / job_b["job_id"]).is_dir()  # both temp dirs intact
        # An input swapped for a symlink to a file outside the roots after it was accepted:
        swapped = dirs.inputs / "swapped.png"
        swapped.write_bytes((dirs.inputs / "face.png").read_bytes())
        assert post(first, "/generate", body(dirs, request_id="c", source_image=str(swapped))).text == "1"
        outside = tmp_path / "outside.png"
        outside.write_bytes(swapped.read_bytes())
        swapped.unlink()
        swapped.symlink_to(outside)

        # kill -9 of the process group of the server whose worker renders job a: that worker has its own process
        # group (BentoML's doing) and lives on, still renewing its lease.
        orphan = int(job_a["worker"].split(":")[1])
        killed, survivor = (first, second) if is_descendant(orphan, first.process.pid) else (second, first)
        os.killpg(killed.process.pid, signal.SIGKILL)
        killed.process.wait(10)
        time.sleep(5)  # more than two lease periods: the surviving server looks at the queue meanwhile
        status_a = post(survivor, "/status", {"request_id": "a"}).json()
        orphan_lived = pid_alive(orphan)
        if orphan_lived:
            assert status_a["attempts"] == 1 and status_a["worker"] == job_a["worker"]  # not taken from it
        done = [wait_state(survivor, key, {"completed", "failed"}, timeout=60) for key in ("a", "b", "c")]
        assert [job["state"] for job in done[:2]] == ["completed", "completed"], done
        names = renders(dirs)
        assert names.count(Path(done[0]["output_path"]).name) == done[0]["attempts"] == (1 if orphan_lived else 2)
        assert names.count(Path(done[1]["output_path"]).name) == 1 and done[1]["attempts"] == 1
        # The swapped input failed its job as an input error; nothing outside the roots was read.
        assert (done[2]["state"], done[2]["error_kind"]) == ("failed", "input"), done[2]
        assert "outside the allowed input directories" in done[2]["error"]
        assert Path(done[2]["output_path"]).name not in names
    finally:
        for server in servers:
            if server.process.poll() is None:
                assert server.stop() == 0, server.output()
        if orphan is not None and pid_alive(orphan):
            os.kill(orphan, signal.SIGKILL)
