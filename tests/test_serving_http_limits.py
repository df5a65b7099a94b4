"""The request-hygiene middleware on its own (the real server's 415/413 are in test_service_http.py)."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.http_limits import RequestLimits


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


def client(limit: int) -> httpx.AsyncClient:
    app = RequestLimits(Starlette(routes=[Route("/generate", echo, methods=["POST"])]), max_body_bytes=limit)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_limits(anyio_backend: str) -> None:
    async with client(1024) as http:
        ok = await http.post("/generate", json={"a": "x" * 100})
        assert ok.status_code == 200 and ok.json()["bytes"] > 100
        form = await http.post("/generate", data={"a": "b"})
        assert form.status_code == 415 and "application/x-www-form-urlencoded" in form.json()["error"]
        big = json.dumps({"a": "x" * 5000})
        declared = await http.post("/generate", content=big, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and "5,0" in declared.json()["error"]

        async def chunks():  # no Content-Length: counted while it streams
            for _ in range(10):
                yield b"x" * 500

        streamed = await http.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "limit of 1,024 bytes" in streamed.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_upload_routes_and_gets_pass_through(anyio_backend: str) -> None:
    """Issue 15's routes (serving/webapp.py) cap their own multipart bodies while streaming: not 415, not 413."""
    routes = [Route(path, echo, methods=["POST"]) for path in ("/generate", "/generate_upload", "/check_photo")]
    routes += [Route(path, echo, methods=["GET"]) for path in ("/video", "/ui/")]
    app = RequestLimits(Starlette(routes=routes), max_body_bytes=1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        files = {"source_image": ("face.png", b"x" * 5000)}
        for path in ("/generate_upload", "/check_photo"):
            upload = await http.post(path, files=files, data={"option": "crop"})
            assert upload.status_code == 200 and upload.json()["bytes"] > 5000, path
        for path in ("/video", "/ui/"):
            assert (await http.get(path, params={"request_id": "x"})).status_code == 200, path
        refused = await http.post("/generate", files=files)  # the JSON routes still refuse multipart
        assert refused.status_code == 415
