"""Python client: a `bentoml.SyncHTTPClient` that also takes `pathlib.Path`, and submit-then-wait helpers.

`bentoml.SyncHTTPClient(url)` builds its requests from the JSON schema the server publishes, not from our
Pydantic model, and serialises arguments with plain `json.dumps`; a `Path` argument therefore fails
client-side ("Object of type PosixPath is not JSON serializable"). With the stock client pass `str(path)`;
or use this subclass, which converts every `os.PathLike` argument to its string before the call:

    with SadTalkerClient("http://127.0.0.1:3000") as client:
        client.generate(driven_audio=Path("/data/in/a.wav"), source_image=Path("/data/in/p.png"), option="crop")

`generate_and_wait` and `wait_for` ride through a server restart: while a server drains (SIGTERM) BentoML stops
answering (requests time out, then connections are refused) until the next start is ready, and a full queue
answers 429. They retry those (and 502/503/504) with backoff until their deadline; resubmitting is safe because
the request_id makes `/generate` and `/generate_upload` idempotent.

From another machine (issue 15), files are uploaded and the video downloaded; `token=` when the server has
SADTALKER_API_TOKENS set (BentoML's client sends it as `Authorization: Bearer`):

    with SadTalkerClient("http://gpu-host:3000", token="...") as client:
        generate_and_wait(client, source_image="face.png", driven_audio="speech.wav", option="full",
                          download_to="clip.mp4")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import bentoml
import httpx
from bentoml.exceptions import BentoMLException

_T = TypeVar("_T")
#: Answers that mean "not now" rather than "no": a full queue, a draining or restarting server, a proxy in between.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


def _plain(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class SadTalkerClient(bentoml.SyncHTTPClient):
    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Like `bentoml.SyncHTTPClient.call` (and so every endpoint method), with Path arguments as strings."""
        return super().call(name, *map(_plain, args), **{key: _plain(value) for key, value in kwargs.items()})


class JobFailed(RuntimeError):
    """The service rendered the job and it failed; ``status`` holds the job record (error, error_kind)."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(f"job {status.get('request_id') or status.get('job_id')} failed: {status.get('error')}")
        self.status = status


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):  # refused, reset, timed out: the server is stopping or starting
        return True
    if isinstance(exc, ServiceError):  # /generate_upload and /video answers
        return exc.status_code in RETRYABLE_STATUS
    return isinstance(exc, BentoMLException) and int(exc.error_code) in RETRYABLE_STATUS


def retry_unavailable(
    call: Callable[[], _T], *, deadline: float, max_delay: float = 10.0, sleep: Callable[[float], None] = time.sleep
) -> _T:
    """``call()``, retried with backoff while the server is unavailable, until ``deadline`` (time.monotonic)."""
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            if not _is_unavailable(exc) or time.monotonic() + delay > deadline:
                raise
            sleep(delay)
            delay = min(delay * 2, max_delay)


def generate_and_wait(
    client: bentoml.SyncHTTPClient,
    *,
    source_image: str | os.PathLike[str],
    driven_audio: str | os.PathLike[str],
    option: str,
    request_id: str | None = None,
    poll_seconds: float = 2.0,
    timeout_seconds: float = 3600.0,
    on_status: Any = None,
    download_to: str | os.PathLike[str] | None = None,
    **motion: Any,
) -> dict[str, Any]:
    """Submit one video and follow ``/status`` until it is ready; returns the final job record.

    With ``download_to`` the two paths are LOCAL files: they are uploaded (``/generate_upload``) and the finished
    video is saved there (``/video``), so this works against a remote server. Without it they are server paths.
    ``motion``: the optional motion controls ``ref_eyeblink`` / ``ref_pose`` (video paths, local or on the server
    like the other two) and ``input_yaw`` / ``input_pitch`` / ``input_roll`` (lists of degrees).

    ``request_id`` defaults to a fresh one; resubmitting with the same id never renders twice, so this is safe
    to retry after a lost connection.  Raises ``JobFailed`` if the render fails, ``TimeoutError`` if it is not
    done within ``timeout_seconds``.  ``on_status(status)`` is called after every poll (progress bars).
    """
    import secrets

    request_id = request_id or f"client-{secrets.token_hex(8)}"
    deadline = time.monotonic() + timeout_seconds
    if download_to is not None:
        retry_unavailable(
            lambda: upload_files(
                client,
                source_image=source_image,
                driven_audio=driven_audio,
                option=option,
                request_id=request_id,
                **motion,
            ),
            deadline=deadline,
        )
    else:
        answer = retry_unavailable(
            lambda: client.generate(
                driven_audio=_plain(driven_audio),
                source_image=_plain(source_image),
                option=option,
                request_id=request_id,
                **{name: _plain(value) for name, value in motion.items() if value is not None},
            ),
            deadline=deadline,
        )
        if str(answer).strip() != "1":
            raise RuntimeError(f"unexpected answer from /generate: {answer!r}")
    status = wait_for(
        client, request_id, poll_seconds=poll_seconds, timeout_seconds=timeout_seconds, on_status=on_status
    )
    if download_to is not None:
        retry_unavailable(lambda: download_video(client, request_id, download_to), deadline=deadline)
    return status


# -- issue 15: uploads and downloads (remote clients) -------------------------------------------------------------


class ServiceError(RuntimeError):
    """An HTTP error answer of /generate_upload or /video; ``status_code`` and the JSON ``body`` are kept."""

    def __init__(self, status_code: int, body: Any) -> None:
        message = body.get("error") if isinstance(body, dict) else body
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.body = body


def _raise_for(response: Any) -> None:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        raise ServiceError(response.status_code, body)


def upload_files(
    client: bentoml.SyncHTTPClient,
    *,
    source_image: str | os.PathLike[str],
    driven_audio: str | os.PathLike[str],
    option: str,
    request_id: str | None = None,
    landmarks: list[list[float]] | None = None,
    timeout_seconds: float = 600.0,
    ref_eyeblink: str | os.PathLike[str] | None = None,
    ref_pose: str | os.PathLike[str] | None = None,
    input_yaw: list[float] | None = None,
    input_pitch: list[float] | None = None,
    input_roll: list[float] | None = None,
) -> str:
    """Upload a local portrait and recording (``/generate_upload``); returns the job id. Raises ServiceError.

    ``ref_eyeblink`` / ``ref_pose``: local reference videos, uploaded too; the angle lists go as JSON text."""
    import contextlib
    import json
    from pathlib import Path

    data = {"option": option}
    if request_id is not None:
        data["request_id"] = request_id
    for name, value in (("landmarks", landmarks), ("input_yaw", input_yaw), ("input_pitch", input_pitch),
                        ("input_roll", input_roll)):  # fmt: skip
        if value is not None:
            data[name] = json.dumps(value)
    paths = {"source_image": source_image, "driven_audio": driven_audio, "ref_eyeblink": ref_eyeblink,
             "ref_pose": ref_pose}  # fmt: skip
    with contextlib.ExitStack() as files_open:
        files = {
            name: (Path(path).name, files_open.enter_context(open(path, "rb")))  # noqa: SIM115 (closed by the stack)
            for name, path in paths.items()
            if path is not None
        }
        response = client.request("POST", "/generate_upload", data=data, files=files, timeout=timeout_seconds)
    _raise_for(response)
    return str(response.headers.get("x-sadtalker-job-id", ""))


def download_video(
    client: bentoml.SyncHTTPClient,
    request_id: str,
    destination: str | os.PathLike[str],
    *,
    timeout_seconds: float = 600.0,
) -> str:
    """Save the finished mp4 of a job (``/video``) to ``destination`` (written whole, then renamed); returns it."""
    from pathlib import Path

    target = Path(destination)
    partial = target.with_name(f".{target.name}.part")
    with client.client.stream("GET", "/video", params={"request_id": request_id}, timeout=timeout_seconds) as answer:
        if answer.status_code >= 400:
            answer.read()
        _raise_for(answer)
        with open(partial, "wb") as sink:
            for chunk in answer.iter_bytes():
                sink.write(chunk)
    os.replace(partial, target)
    return str(target)


def wait_for(
    client: bentoml.SyncHTTPClient,
    request_id: str,
    *,
    poll_seconds: float = 2.0,
    timeout_seconds: float = 3600.0,
    on_status: Any = None,
) -> dict[str, Any]:
    """Follow ``/status`` of an accepted job until it is completed (returned) or failed (``JobFailed``)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        status = retry_unavailable(lambda: client.status(request_id=request_id), deadline=deadline)
        if on_status is not None:
            on_status(status)
        if status["state"] == "completed":
            return status
        if status["state"] == "failed":
            raise JobFailed(status)
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {request_id} not done after {timeout_seconds:.0f} s: {status['state']}")
        time.sleep(poll_seconds)


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.client --url URL --image PATH --audio PATH --option full|crop``: prints the video path."""
    import argparse

    parser = argparse.ArgumentParser(description="Submit a talking-head video and wait for it")
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--image", required=True, help="portrait path ON THE SERVER (local with --download-to)")
    parser.add_argument("--audio", required=True, help="speech path ON THE SERVER (local with --download-to)")
    parser.add_argument("--download-to", default=None, help="upload local files and save the video here")
    parser.add_argument("--token", default=os.environ.get("SADTALKER_API_TOKEN"), help="API token (or env)")
    parser.add_argument("--option", choices=["full", "crop"], default="full")
    parser.add_argument("--request-id", default=None)
    args = parser.parse_args(argv)

    def show(status: dict[str, Any]) -> None:
        print(f"{status['state']:>9} {status['progress']:5.1f}% {status['stage'] or ''}", flush=True)

    with SadTalkerClient(args.url, timeout=60, token=args.token) as client:
        try:
            status = generate_and_wait(
                client,
                source_image=args.image,
                driven_audio=args.audio,
                option=args.option,
                request_id=args.request_id,
                on_status=show,
                download_to=args.download_to,
            )
        except (JobFailed, ServiceError) as exc:
            print(f"error: {exc}")
            return 1
    print(args.download_to or status["output_path"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
