"""Issue 15 against a real `bentoml serve`: uploads, downloads, spool cleanup, API tokens, the page's assets.

ONE server for the module, started with API tokens set (one from SADTALKER_API_TOKENS, one from a token file),
so every test also exercises the token path. Rendering is the test fake that writes a real tiny mp4.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_video_pipeline import FAIL_CONTENT_MARKER, NOFACE_CONTENT_MARKER
from test_service_http import Dirs, Server, launch, server_env, wait_ready

#: The pipeline factory of every server in the web tests (one place to change when the fakes move).
FAKE_FACTORY = "tests.fake_video_pipeline:create"
TOKEN = "env-token-0123456789abcdef"
FILE_TOKEN = "file-token-fedcba9876543210"
MAX_IMAGE_BYTES = 200_000


def web_env(dirs: Dirs, **overrides: str) -> dict[str, str]:
    token_file = dirs.root / "tokens.txt"
    token_file.write_text(f"# API tokens, one per line\n{FILE_TOKEN}\n")
    env = server_env(
        dirs,
        SADTALKER_PIPELINE_FACTORY=FAKE_FACTORY,
        SADTALKER_FAKE_RENDER_SECONDS="1.0",
        SADTALKER_API_TOKENS=f"{TOKEN}, ",
        SADTALKER_API_TOKEN_FILE=str(token_file),
        SADTALKER_MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
    )
    # The photo check loads RetinaFace from the checkpoint directory: the prebuilt synthetic one if given.
    checkpoints = os.environ.get("SADTALKER_TEST_CHECKPOINTS")
    env["SADTALKER_CHECKPOINTS"] = checkpoints or str(dirs.root / "no-checkpoints")
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Dirs]]:
    dirs = Dirs.make(tmp_path_factory.mktemp("web"))
    (dirs.inputs / "fail_upload.png").write_bytes((dirs.inputs / "face.png").read_bytes() + FAIL_CONTENT_MARKER)
    (dirs.inputs / "noface_upload.png").write_bytes((dirs.inputs / "face.png").read_bytes() + NOFACE_CONTENT_MARKER)
    server = launch(dirs, web_env(dirs), "web")
    wait_ready(server)
    yield server, dirs
    code = server.stop()
    assert code == 0, server.output()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def spool(dirs: Dirs) -> list[str]:
    root = dirs.state / "uploads"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def wait_spool_empty(dirs: Dirs, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while spool(dirs) and time.monotonic() < deadline:
        time.sleep(0.1)
    return spool(dirs)


def upload(server: Server, dirs: Dirs, image: str = "face.png", audio: str = "speech.wav", **fields: str):
    with open(dirs.inputs / image, "rb") as image_file, open(dirs.inputs / audio, "rb") as audio_file:
        return httpx.post(
            f"{server.url}/generate_upload",
            headers=AUTH,
            data={"option": "crop", **fields},
            files={"source_image": (image, image_file), "driven_audio": (audio, audio_file)},
            timeout=30,
        )


def status_of(server: Server, key: str) -> httpx.Response:
    return httpx.post(f"{server.url}/status", json={"request_id": key}, headers=AUTH, timeout=30)


def wait_done(server: Server, key: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = status_of(server, key).json()
        if found["state"] in ("completed", "failed"):
            return found
        time.sleep(0.2)
    raise AssertionError(f"job {key} not done: {found}")


def jobs(server: Server) -> list[dict]:
    return httpx.post(f"{server.url}/jobs", json={"limit": 500}, headers=AUTH, timeout=30).json()


def test_upload_then_download_returns_the_output_file(web: tuple[Server, Dirs]) -> None:
    server, dirs = web
    response = upload(server, dirs, request_id="up-1")
    assert (response.status_code, response.text) == (200, "1"), response.text
    output = Path(response.headers["x-sadtalker-output"])
    early = httpx.get(f"{server.url}/video", params={"request_id": "up-1"}, headers=AUTH, timeout=30)
    assert early.status_code == 409 and early.json()["state"] in ("queued", "running")  # 1 s render
    status = wait_done(server, "up-1")
    assert status["state"] == "completed", status
    assert Path(status["source_image"]).is_relative_to(dirs.state / "uploads")  # rendered from the spool
    video = httpx.get(f"{server.url}/video", params={"request_id": "up-1"}, headers=AUTH, timeout=30)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content == output.read_bytes() and video.content[4:8] == b"ftyp" and len(video.content) > 1000
    assert wait_spool_empty(dirs) == []


def test_failed_upload_job_is_410_and_its_files_are_gone(web: tuple[Server, Dirs]) -> None:
    server, dirs = web
    assert upload(server, dirs, image="fail_upload.png", request_id="up-fail").text == "1"
    assert wait_done(server, "up-fail")["state"] == "failed"
    answer = httpx.get(f"{server.url}/video", params={"request_id": "up-fail"}, headers=AUTH, timeout=30)
    assert answer.status_code == 410 and "fake failure" in answer.json()["error"]
    assert wait_spool_empty(dirs) == []
    unknown = httpx.get(f"{server.url}/video", params={"request_id": "nobody"}, headers=AUTH, timeout=30)
    assert unknown.status_code == 404


def test_oversized_upload_is_413_and_leaves_nothing(web: tuple[Server, Dirs]) -> None:
    server, dirs = web
    (dirs.inputs / "big.png").write_bytes(os.urandom(MAX_IMAGE_BYTES + 50_000))
    before = jobs(server)
    response = upload(server, dirs, image="big.png", request_id="too-big")
    assert response.status_code == 413, response.text
    assert response.json()["field"] == "source_image" and "200,000" in response.json()["error"]
    assert spool(dirs) == [] and jobs(server) == before
    assert status_of(server, "too-big").status_code == 404


@pytest.mark.parametrize(
    ("image", "fields", "field", "reason"),
    [
        ("junk.png", {}, "source_image", "cannot be used as an image"),
        ("face.png", {"option": "resize"}, "option", ""),
        ("face.png", {"landmarks": "[[1, 2]"}, "landmarks", "not valid JSON"),
        ("face.png", {"request_id": "bad id!"}, "request_id", ""),
    ],
)
def test_bad_upload_is_400_naming_the_field(
    web: tuple[Server, Dirs], image: str, fields: dict, field: str, reason: str
) -> None:
    server, dirs = web
    before = jobs(server)
    response = upload(server, dirs, image=image, **fields)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and reason in response.json()["error"]
    assert spool(dirs) == [] and jobs(server) == before


def test_missing_file_part_is_400(web: tuple[Server, Dirs]) -> None:
    server, dirs = web
    with open(dirs.inputs / "face.png", "rb") as image:
        response = httpx.post(
            f"{server.url}/generate_upload",
            headers=AUTH,
            data={"option": "full"},
            files={"source_image": ("face.png", image)},
            timeout=30,
        )
    assert response.status_code == 400 and response.json()["field"] == "driven_audio"
    assert spool(dirs) == []


def test_upload_retry_with_same_request_id_is_one_job(web: tuple[Server, Dirs]) -> None:
    server, dirs = web
    first, second = upload(server, dirs, request_id="retry"), upload(server, dirs, request_id="retry")
    assert (first.text, second.text) == ("1", "1")
    assert first.headers["x-sadtalker-job-id"] == second.headers["x-sadtalker-job-id"]
    other = upload(server, dirs, image="fail_upload.png", request_id="retry")  # other files, same id
    assert other.status_code == 409 and other.json()["field"] == "request_id"
    assert wait_done(server, "retry")["state"] == "completed"
    again = upload(server, dirs, request_id="retry")  # after the job ended: still the same job, files removed
    assert again.headers["x-sadtalker-job-id"] == first.headers["x-sadtalker-job-id"]
    assert [job["request_id"] for job in jobs(server)].count("retry") == 1
    assert wait_spool_empty(dirs) == []


def test_resubmitted_failed_uploads_requeue_or_409_like_generate(web: tuple[Server, Dirs]) -> None:
    server, dirs = web
    first = upload(server, dirs, image="fail_upload.png", request_id="up-transient")
    failed = wait_done(server, "up-transient")
    assert (failed["state"], failed["error_kind"]) == ("failed", "render")
    assert wait_spool_empty(dirs) == []  # a failed job ended: its files are gone
    again = upload(server, dirs, image="fail_upload.png", request_id="up-transient")
    assert (again.status_code, again.text) == (200, "1"), again.text
    assert again.headers["x-sadtalker-job-id"] == first.headers["x-sadtalker-job-id"]  # the same job, queued again
    retried = wait_done(server, "up-transient")
    assert retried["state"] == "failed" and retried["started_at"] > failed["finished_at"], retried  # rendered again
    assert wait_spool_empty(dirs) == []

    assert upload(server, dirs, image="noface_upload.png", request_id="up-noface").text == "1"
    assert wait_done(server, "up-noface")["error_kind"] == "no_face"
    permanent = upload(server, dirs, image="noface_upload.png", request_id="up-noface")
    assert permanent.status_code == 409 and permanent.json()["field"] == "request_id", permanent.text
    assert "no_face" in permanent.json()["error"]
    assert wait_spool_empty(dirs) == []


def test_video_by_job_id_like_status(web: tuple[Server, Dirs]) -> None:
    server, dirs = web
    job_id = upload(server, dirs, request_id="by-job-id").headers["x-sadtalker-job-id"]
    assert wait_done(server, "by-job-id")["state"] == "completed"
    by_request = httpx.get(f"{server.url}/video", params={"request_id": "by-job-id"}, headers=AUTH, timeout=30)
    by_job = httpx.get(f"{server.url}/video", params={"job_id": job_id}, headers=AUTH, timeout=30)
    assert by_job.status_code == 200 and by_job.content == by_request.content
    both = httpx.get(
        f"{server.url}/video", params={"job_id": job_id, "request_id": "by-job-id"}, headers=AUTH, timeout=30
    )
    assert both.status_code == 400
    # Separate namespaces, as on /status: a job id is not a request_id.
    crossed = httpx.get(f"{server.url}/video", params={"request_id": job_id}, headers=AUTH, timeout=30)
    assert crossed.status_code == 404


def test_uploads_pass_the_json_body_limit_and_tokens_come_first(web: tuple[Server, Dirs]) -> None:
    import numpy as np
    from PIL import Image

    server, dirs = web
    noisy = np.random.default_rng(0).integers(0, 256, (180, 180, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(dirs.inputs / "noisy.png")
    size = (dirs.inputs / "noisy.png").stat().st_size
    assert 64 * 1024 < size < MAX_IMAGE_BYTES  # above SADTALKER_MAX_BODY_BYTES (64 KiB), below the image cap
    response = upload(server, dirs, image="noisy.png", request_id="big-multipart")
    assert (response.status_code, response.text) == (200, "1")  # RequestLimits lets multipart uploads through
    assert wait_done(server, "big-multipart")["state"] == "completed"
    checked = httpx.post(
        f"{server.url}/check_photo",
        headers=AUTH,
        timeout=60,
        files={"source_image": ("noisy.png", (dirs.inputs / "noisy.png").read_bytes())},
    )
    assert checked.status_code in (200, 503)  # 503 only without detector weights; never 413/415
    # JSON routes keep their limits, behind the token check: no token -> 401 whatever the body.
    form = {"content": b"a=1", "headers": {"content-type": "application/x-www-form-urlencoded"}}
    assert httpx.post(f"{server.url}/generate", timeout=30, **form).status_code == 401
    assert (
        httpx.post(f"{server.url}/generate", timeout=30, **{**form, "headers": {**form["headers"], **AUTH}}).status_code
        == 415
    )
    big = {"source_image": "x" * (70 * 1024), "driven_audio": "y", "option": "crop"}
    assert httpx.post(f"{server.url}/generate", json=big, timeout=30).status_code == 401
    assert httpx.post(f"{server.url}/generate", json=big, headers=AUTH, timeout=30).status_code == 413
    assert wait_spool_empty(dirs) == []


def test_generate_refuses_paths_into_the_spool(web: tuple[Server, Dirs]) -> None:
    server, dirs = web
    body = {
        "source_image": str(dirs.state / "uploads" / "x" / "source_image.png"),
        "driven_audio": str(dirs.inputs / "speech.wav"),
        "option": "crop",
    }
    response = httpx.post(f"{server.url}/generate", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 400 and response.json()["field"] == "source_image"


def test_python_client_uploads_and_downloads(web: tuple[Server, Dirs], tmp_path: Path) -> None:
    import bentoml

    from serving.client import SadTalkerClient, ServiceError, generate_and_wait, upload_files

    server, dirs = web
    target = tmp_path / "clip.mp4"
    with SadTalkerClient(server.url, timeout=60, token=FILE_TOKEN) as client:
        status = generate_and_wait(
            client,
            source_image=dirs.inputs / "face.png",
            driven_audio=str(dirs.inputs / "speech.wav"),
            option="full",
            poll_seconds=0.2,
            timeout_seconds=60,
            download_to=target,
        )
        assert status["state"] == "completed"
        assert target.read_bytes() == Path(status["output_path"]).read_bytes()
        with pytest.raises(ServiceError) as info:
            upload_files(
                client, source_image=dirs.inputs / "junk.png", driven_audio=dirs.inputs / "speech.wav", option="crop"
            )
        assert info.value.status_code == 400 and info.value.body["field"] == "source_image"
    # The stock BentoML client: JSON endpoints as methods, the upload through its `request`.
    with bentoml.SyncHTTPClient(server.url, timeout=60, token=TOKEN) as client:
        with open(dirs.inputs / "face.png", "rb") as image, open(dirs.inputs / "speech.wav", "rb") as audio:
            answer = client.request(
                "POST",
                "/generate_upload",
                data={"option": "crop", "request_id": "stock-client"},
                files={"source_image": ("face.png", image), "driven_audio": ("speech.wav", audio)},
            )
        assert answer.text == "1"
        assert client.status(request_id="stock-client")["request_id"] == "stock-client"
    assert wait_done(server, "stock-client")["state"] == "completed"


def test_python_client_uploads_motion_controls(web: tuple[Server, Dirs], tmp_path: Path) -> None:
    from test_serving_motion import write_video

    from serving.client import SadTalkerClient, ServiceError, generate_and_wait, upload_files

    server, dirs = web
    video = write_video(tmp_path / "nod.mp4", frames=4)
    target = tmp_path / "motion.mp4"
    with SadTalkerClient(server.url, timeout=60, token=TOKEN) as client:
        status = generate_and_wait(
            client, source_image=dirs.inputs / "face.png", driven_audio=dirs.inputs / "speech.wav", option="crop",
            request_id="up-motion", poll_seconds=0.2, timeout_seconds=60, download_to=target, ref_pose=video,
            input_yaw=[-20, 20],
        )  # fmt: skip
        assert status["state"] == "completed" and target.is_file()
        with pytest.raises(ServiceError) as info:  # an audio file is no reference video: 400 naming the field
            upload_files(client, source_image=dirs.inputs / "face.png", driven_audio=dirs.inputs / "speech.wav",
                         option="crop", ref_eyeblink=dirs.inputs / "speech.wav")  # fmt: skip
        assert info.value.status_code == 400 and info.value.body["field"] == "ref_eyeblink", info.value.body
    assert wait_spool_empty(dirs) == []


def test_check_photo(web: tuple[Server, Dirs]) -> None:
    server, dirs = web
    with open(dirs.inputs / "face.png", "rb") as image:
        answer = httpx.post(
            f"{server.url}/check_photo", headers=AUTH, files={"source_image": ("f.png", image)}, timeout=60
        )
    by_path = httpx.post(
        f"{server.url}/check_photo", headers=AUTH, json={"source_image": str(dirs.inputs / "face.png")}, timeout=60
    )
    if os.environ.get("SADTALKER_TEST_CHECKPOINTS"):
        assert answer.status_code == 200, answer.text
        verdict = answer.json()
        assert (verdict["width"], verdict["height"]) == (48, 64) and verdict["face_count"] == len(verdict["faces"])
        assert isinstance(verdict["usable"], bool) and verdict["reason"]
        assert by_path.json() == {**verdict, "seconds": by_path.json()["seconds"]}
    else:
        assert answer.status_code == 503 and "detection_Resnet50_Final.pth" in answer.json()["error"]
    outside = httpx.post(f"{server.url}/check_photo", headers=AUTH, json={"source_image": "/etc/hostname"}, timeout=30)
    assert outside.status_code == 400 and outside.json()["field"] == "source_image"
    with open(dirs.inputs / "junk.png", "rb") as junk:
        unreadable = httpx.post(
            f"{server.url}/check_photo", headers=AUTH, files={"source_image": ("j.png", junk)}, timeout=30
        )
    assert unreadable.status_code in (400, 503)  # 400 once the detector is there: junk is no image
    assert spool(dirs) == []


def test_page_and_assets_are_served_without_cdn(web: tuple[Server, Dirs]) -> None:
    server, _ = web
    page = httpx.get(f"{server.url}/ui", follow_redirects=True, timeout=30)
    assert page.status_code == 200 and page.url.path == "/ui/" and "text/html" in page.headers["content-type"]
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        assert f'"{asset}"' in page.text
        response = httpx.get(f"{server.url}/ui/{asset}", timeout=30)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "http://" not in response.text and "https://" not in response.text  # nothing from elsewhere
    assert "http://" not in page.text and "https://" not in page.text


PROTECTED = [
    ("POST", "/generate", {"json": {}}),
    ("POST", "/status", {"json": {"request_id": "up-1"}}),
    ("POST", "/jobs", {"json": {}}),
    ("POST", "/system_info", {"json": {}}),
    ("POST", "/generate_upload", {"files": {"source_image": ("a.png", b"x")}}),
    ("POST", "/check_photo", {"json": {"source_image": "/nope.png"}}),
    ("GET", "/video", {"params": {"request_id": "nobody"}}),
    ("GET", "/docs.json", {}),
    ("GET", "/", {}),
]


@pytest.mark.parametrize(("method", "route", "kwargs"), PROTECTED, ids=[route for _, route, _ in PROTECTED])
def test_every_endpoint_needs_a_token(web: tuple[Server, Dirs], method: str, route: str, kwargs: dict) -> None:
    server, _ = web
    url = f"{server.url}{route}"
    missing = httpx.request(method, url, timeout=30, **kwargs)
    wrong = httpx.request(method, url, headers={"Authorization": f"Bearer {TOKEN}x"}, timeout=30, **kwargs)
    basic = httpx.request(method, url, headers={"Authorization": f"Basic {TOKEN}"}, timeout=30, **kwargs)
    assert [missing.status_code, wrong.status_code, basic.status_code] == [401, 401, 401]
    assert "Bearer" in missing.json()["error"] and missing.headers["www-authenticate"].startswith("Bearer")
    for token in (TOKEN, FILE_TOKEN):
        ok = httpx.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kwargs)
        assert ok.status_code != 401, (route, ok.text)


def test_health_metrics_and_page_are_open_and_tokens_never_logged(web: tuple[Server, Dirs]) -> None:
    server, _ = web
    for route in ("/livez", "/readyz", "/metrics", "/ui/", "/ui/app.js"):
        assert httpx.get(f"{server.url}{route}", timeout=30).status_code == 200, route
    log = server.output()
    assert TOKEN not in log and FILE_TOKEN not in log


def test_bad_token_file_stops_serve_in_one_line(tmp_path: Path) -> None:
    from test_service_http import run_until_exit

    dirs = Dirs.make(tmp_path)
    env = web_env(dirs, SADTALKER_API_TOKEN_FILE=str(tmp_path / "missing-tokens.txt"))
    code, output, _ = run_until_exit(dirs, env, "badtokens")
    assert code != 0 and "SADTALKER_API_TOKEN_FILE: cannot read" in output and "Traceback" not in output
    assert TOKEN not in output
