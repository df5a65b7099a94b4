"""Routes for browsers and remote clients, mounted into the BentoML service (`@bentoml.asgi_app`).

* `POST /generate_upload` multipart: files `source_image`, `driven_audio`, `ref_eyeblink?`, `ref_pose?`; fields
  `option`, `request_id?`, `landmarks?`, `input_yaw?`, `input_pitch?`, `input_roll?` (JSON text, e.g. `[-30, 30]`).
  Streamed into the spool (serving/uploads.py), then the SAME `JobService.submit` `/generate` uses (with a
  validator whose only input root is the spool): same checks, queue, answer `1`, headers and error
  codes, plus 413 for oversized files.
* `GET /video?request_id=...` (or `?job_id=`, like /status): the finished mp4 (`video/mp4`, Range requests
  supported for seeking); 404 unknown, 409 queued/running (body: state, progress, stage, queue_position),
  410 failed (body: error) or deleted.
* `POST /check_photo`: multipart `source_image` file, or JSON `{"source_image": "<server path>"}` -> faces, boxes,
  scores, usable + reason (serving/photo_check.py); 503 if the detector weights are missing.
* `GET /ui/`: the page (serving/web/: index.html, app.js, style.css; nothing from a CDN).

Why plain Starlette routes and not BentoML `@bentoml.api` with `Path` inputs: BentoML reads an uploaded file
whole into memory and copies it to a temp directory before the API function runs, so a cap could only be
checked after the fact; here the body is parsed as it arrives and refused at the cap (see serving/uploads.py).
Why a static page and not a mounted Gradio app: Gradio is a large dependency tree (and fetches fonts and
front-end assets from the internet by default) for one form; the page is ~450 lines on the JSON API, needs no
new package, and works on an offline deploy server.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving.config import ServingConfig, env_flag
from serving.photo_check import PhotoChecker, PhotoCheckUnavailable, PhotoUnreadable
from serving.schema import ANGLE_FIELDS, JobRequest
from serving.uploads import (
    SpoolJanitor,
    UploadLimits,
    UploadRejected,
    finalize,
    receive_upload,
    spool_only,
    spool_root,
)
from serving.validation import RequestInvalid, RequestValidator, resolve_request_path

log = logging.getLogger("sadtalker.serving.web")

WEB_DIR = Path(__file__).resolve().parent / "web"


@dataclass(frozen=True)
class WebSettings:
    """SADTALKER_CHECK_FACE_ON_SUBMIT (0): 1 = `/generate` and `/generate_upload` run the photo check before
    answering and refuse a photo without a face (400 naming source_image). Off by default: the check takes
    ~0.5 s of CPU, and `1` should stay immediate."""

    check_face_on_submit: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WebSettings:
        env = dict(os.environ) if env is None else env
        return cls(check_face_on_submit=env_flag(env, "SADTALKER_CHECK_FACE_ON_SUBMIT", False))


class FaceCheckingValidator(RequestValidator):
    """The usual validation, then the photo check on the (already validated) image: no face -> RequestInvalid."""

    def __init__(self, config: ServingConfig, checker: PhotoChecker) -> None:
        super().__init__(config)
        self._checker = checker

    def validate(self, request: Any) -> JobRequest:
        checked = super().validate(request)
        try:
            verdict = self._checker.check(Path(checked.source_image))
        except PhotoUnreadable as exc:
            raise RequestInvalid("source_image", str(exc).removeprefix("source_image: ")) from None
        if not verdict.faces:
            raise RequestInvalid("source_image", verdict.reason)
        return checked


@dataclass
class WebContext:
    """What the routes need from the running service; built in `SadTalkerService.__init__`."""

    config: ServingConfig
    settings: WebSettings
    checker: PhotoChecker
    janitor: SpoolJanitor
    runtime: Any = None  # serving.runtime.Runtime, attached once started

    upload_validator: RequestValidator | None = None  # built on first use (see `for_uploads`)

    @classmethod
    def create(cls, config: ServingConfig, settings: WebSettings | None = None) -> WebContext:
        spool_root(config).mkdir(parents=True, exist_ok=True)  # the validators resolve their roots once
        return cls(
            config=config,
            settings=settings or WebSettings.from_env(),
            checker=PhotoChecker(config.checkpoint_dir),
            janitor=SpoolJanitor(spool_root(config)),
        )

    def _validator(self, config: ServingConfig) -> RequestValidator:
        if self.settings.check_face_on_submit:
            return FaceCheckingValidator(config, self.checker)
        return RequestValidator(config)

    def validator(self) -> RequestValidator:
        """The runtime's validator (`/generate`): the configured input roots only, never the spool; with the
        opt-in, the face check runs too."""
        return self._validator(self.config)

    def for_uploads(self) -> RequestValidator:
        """The validator `/generate_upload` submits with (`JobService.submit(..., validator=)`): the same checks,
        with the spool as the ONLY input root (an upload's files are always there)."""
        if self.upload_validator is None:
            self.upload_validator = self._validator(spool_only(self.config))
        return self.upload_validator

    @property
    def extra_input_roots(self) -> tuple[Path, ...]:
        """What the render worker may read besides the input roots (`Runtime.start(extra_input_roots=)`)."""
        return (spool_root(self.config),)

    def attach(self, runtime: Any) -> None:
        """Hook the spool cleanup into the worker and clear leftovers; call before `runtime.worker.start()`.

        Only a job that ENDED (completed or failed) releases its spool directory: a job requeued (shutdown,
        lease expiry) or running under another worker's live lease renders again from the same files. Call
        after `Runtime.start` (which already requeued expired leases), so the sweep keeps every queued job
        and every running job whose owner is alive.
        """
        self.runtime = runtime
        runtime.worker.on_job_finished = lambda record: self.janitor.release(record.request.source_image)
        store = runtime.store
        live = [*store.queued(), *filter(None, map(store.get, store.live_job_ids()))]
        self.janitor.sweep(job.request.source_image for job in live)


def _error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def submit_error(exc: Exception) -> Response | None:
    """The HTTP answer /generate gives for a JobService.submit exception (None: not one of them)."""
    from serving.jobs import NotAccepting, QueueFull, RequestConflict
    from serving.store import StoreFull

    if isinstance(exc, RequestInvalid):
        return _error(400, str(exc), exc.field)
    if isinstance(exc, RequestConflict):
        return _error(409, str(exc), "request_id")
    if isinstance(exc, QueueFull):
        return _error(429, str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, (NotAccepting, StoreFull)):
        return _error(503, str(exc), headers={"Retry-After": "30"})
    return None


def _schema_error(exc: Exception) -> Response:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else "body"
        return _error(400, f"{name}: {first['msg']}", name)
    raise exc


def create_app(context: Callable[[], WebContext]) -> Starlette:
    """The Starlette app; `context()` returns the running service's WebContext (looked up per request)."""

    async def generate_upload(request: Request) -> Response:
        from serving.schema import GenerateRequest

        web = context()
        try:
            received = await receive_upload(
                dict(request.headers), request.stream(), spool_root(web.config), UploadLimits.from_config(web.config)
            )
        except UploadRejected as exc:
            return _error(exc.status, str(exc), exc.field)
        fields = received.fields
        request_id = fields.get("request_id") or None
        upload = finalize(received, request_id)
        try:
            decoded: dict[str, Any] = {}
            for name in ("landmarks", *ANGLE_FIELDS):
                try:
                    decoded[name] = json.loads(fields[name]) if fields.get(name) else None
                except json.JSONDecodeError as exc:
                    raise RequestInvalid(name, f"not valid JSON ({exc.msg}); send e.g. [-30, 30]") from None
            try:
                # model_validate: `option` is checked against the presets here (a bad one is a 400 naming it).
                job_request = GenerateRequest.model_validate(
                    {
                        **{name: str(path) for name, path in upload.files.items()},
                        "option": fields.get("option", ""),
                        "request_id": request_id,
                        **decoded,
                    }
                )
            except Exception as exc:  # pydantic.ValidationError -> 400 naming the field
                if not upload.reused:
                    upload.discard()
                return _schema_error(exc)
            # The same call /generate makes.
            submission = await run_in_threadpool(web.runtime.jobs.submit, job_request, validator=web.for_uploads())
        except Exception as exc:
            answer = submit_error(exc)
            if answer is None:
                raise
            if not upload.reused:  # a reused directory belongs to a job that is still waiting
                upload.discard()
            return answer
        if submission.duplicate and submission.job.state.value in ("completed", "failed"):
            web.janitor.release(upload.files["source_image"])
        response = PlainTextResponse("1")
        response.headers["X-SadTalker-Job-Id"] = submission.job.id
        response.headers["X-SadTalker-Output"] = str(submission.job.output_path)
        return response

    async def video(request: Request) -> Response:
        from serving.jobs import JobNotFound
        from serving.store import StoreUnavailable

        # Like /status: ?request_id= (the client's key) OR ?job_id= (X-SadTalker-Job-Id), two separate namespaces.
        keys = {name: request.query_params.get(name, "").strip() for name in ("request_id", "job_id")}
        given = {name: value for name, value in keys.items() if value}
        if len(given) != 1 or any(len(value) > 128 for value in given.values()):
            return _error(
                400, "request_id: give exactly one of ?request_id=<request_id> and ?job_id=<job id>", "request_id"
            )
        web = context()
        try:
            status = await run_in_threadpool(web.runtime.jobs.status, **given)
        except JobNotFound as exc:
            return _error(404, str(exc), next(iter(given)))
        except StoreUnavailable as exc:
            return JSONResponse({"error": str(exc)}, 503, headers={"Retry-After": "30"})
        summary = {
            "request_id": status.request_id,
            "job_id": status.job_id,
            "state": status.state,
            "progress": status.progress,
            "stage": status.stage,
            "queue_position": status.queue_position,
        }
        if status.state in ("queued", "running"):
            return JSONResponse({"error": f"the video is not ready: job is {status.state}", **summary}, 409)
        if status.state == "failed":
            return JSONResponse({"error": f"the job failed: {status.error}", **summary}, 410)
        path = Path(status.output_path)
        if not path.is_file():
            return JSONResponse({"error": f"the video was deleted from the server ({path.name})", **summary}, 410)
        return FileResponse(path, media_type="video/mp4", filename=path.name, content_disposition_type="inline")

    async def check_photo(request: Request) -> Response:
        web = context()
        upload = None
        content_type = request.headers.get("content-type", "")
        try:
            if content_type.startswith("application/json"):
                try:
                    raw = (await request.json())["source_image"]
                    path = resolve_request_path(str(raw))
                except (ValueError, KeyError, TypeError) as exc:
                    return _error(400, f"source_image: give an absolute server path ({exc})", "source_image")
                if not any(path.is_relative_to(root) for root in web.config.input_dirs) or not path.is_file():
                    return _error(400, "source_image: not a file inside the allowed input directories", "source_image")
            else:
                try:
                    upload = await receive_upload(
                        dict(request.headers),
                        request.stream(),
                        spool_root(web.config),
                        UploadLimits.from_config(web.config),
                        required=("source_image",),
                    )
                except UploadRejected as exc:
                    return _error(exc.status, str(exc), exc.field)
                path = upload.files["source_image"]
            try:
                verdict = await run_in_threadpool(web.checker.check, path)
            except PhotoUnreadable as exc:
                return _error(400, str(exc), "source_image")
            except PhotoCheckUnavailable as exc:
                return _error(503, str(exc))
            return JSONResponse(verdict.to_json())
        finally:
            if upload is not None:
                upload.discard()

    async def ui_redirect(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    return Starlette(
        routes=[
            Route("/generate_upload", generate_upload, methods=["POST"]),
            Route("/video", video, methods=["GET"]),
            Route("/check_photo", check_photo, methods=["POST"]),
            Route("/ui", ui_redirect, methods=["GET"]),
            Mount("/ui", StaticFiles(directory=WEB_DIR, html=True), name="ui"),
        ]
    )


def _current_context() -> WebContext:
    import bentoml

    return bentoml.get_current_service().web


#: Mounted by service.py; each request finds the service instance BentoML created in this worker.
app = create_app(_current_context)
