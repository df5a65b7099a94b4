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
the request_id makes `/generate` idempotent.
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
) -> dict[str, Any]:
    """Submit one video and follow ``/status`` until it is ready; returns the final job record.

    ``request_id`` defaults to a fresh one; resubmitting with the same id never renders twice, so this is safe
    to retry after a lost connection.  Raises ``JobFailed`` if the render fails, ``TimeoutError`` if it is not
    done within ``timeout_seconds``.  ``on_status(status)`` is called after every poll (progress bars).
    """
    import secrets

    request_id = request_id or f"client-{secrets.token_hex(8)}"
    answer = retry_unavailable(
        lambda: client.generate(
            driven_audio=_plain(driven_audio), source_image=_plain(source_image), option=option, request_id=request_id
        ),
        deadline=time.monotonic() + timeout_seconds,
    )
    if str(answer).strip() != "1":
        raise RuntimeError(f"unexpected answer from /generate: {answer!r}")
    return wait_for(
        client, request_id, poll_seconds=poll_seconds, timeout_seconds=timeout_seconds, on_status=on_status
    )


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
    parser.add_argument("--image", required=True, help="portrait path ON THE SERVER (inside SADTALKER_INPUT_DIRS)")
    parser.add_argument("--audio", required=True, help="speech path ON THE SERVER")
    parser.add_argument("--option", choices=["full", "crop"], default="full")
    parser.add_argument("--request-id", default=None)
    args = parser.parse_args(argv)

    def show(status: dict[str, Any]) -> None:
        print(f"{status['state']:>9} {status['progress']:5.1f}% {status['stage'] or ''}", flush=True)

    with SadTalkerClient(args.url, timeout=60) as client:
        try:
            status = generate_and_wait(
                client, source_image=args.image, driven_audio=args.audio, option=args.option,
                request_id=args.request_id, on_status=show,
            )
        except JobFailed as exc:
            print(f"error: {exc}")
            return 1
    print(status["output_path"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
