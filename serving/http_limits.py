"""Request hygiene in front of the API, as plain ASGI middleware (no BentoML import).

Our endpoints take small JSON bodies only. Before BentoML reads or parses anything:

* a POST to one of them whose `Content-Type` is not `application/json` gets 415 (form-encoded and multipart
  bodies would otherwise be accepted by BentoML's generic input handling);
* a declared `Content-Length` above the limit gets 413 at once; a chunked body is counted while it streams
  and cut off with 413 when it passes the limit, so no oversized body is ever buffered or parsed.

Every other route passes through untouched: issue 15's multipart `POST /generate_upload` and `/check_photo`
(serving/webapp.py streams them and enforces the per-file caps itself) and the GETs `/video` and `/ui/`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_ROUTES = frozenset({"/generate", "/status", "/jobs", "/system_info"})


async def _respond(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """415 for non-JSON bodies and 413 beyond ``max_body_bytes`` on the JSON routes."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = 64 * 1024) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in JSON_ROUTES:
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            shown = media_type.decode("latin-1") or "none"
            await _respond(send, 415, f"request bodies must be JSON (Content-Type: application/json), got {shown!r}")
            return
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _respond(send, 413, f"request body is {int(declared):,} bytes; the limit is {limit:,} bytes")
            return
        received = 0
        started = False
        overflowed = False

        async def counting_receive() -> Message:
            nonlocal received, overflowed
            if overflowed:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Stop reading: the app sees a client that went away and gives up; we answer 413 for it.
                    overflowed = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflowed and not started:
                return  # whatever the app answers to a cut-off body, the client gets the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not overflowed:
                raise
        if overflowed and not started:
            await _respond(send, 413, f"request body is larger than the limit of {limit:,} bytes")
