"""BentoML service: SadTalker talking-head videos, rendered in the background.

    bentoml serve service:SadTalkerService            # production: needs a CUDA GPU
    SADTALKER_ALLOW_CPU=1 bentoml serve service:SadTalkerService   # dev/CI on CPU (slow)

Endpoints (all POST, JSON bodies; BentoML's /readyz, /livez and /metrics come for free):

* `/generate` {driven_audio, source_image, option: "full"|"crop", request_id?, landmarks?}
  -> `1` (text/plain) once the job is durably queued; the video appears later as
  `$SADTALKER_OUTPUT_DIR/<YYYYmmdd-HHMMSS>_<8 hex>.mp4`. 400 names the bad field, 409 = request_id reused
  with other inputs (or of a job that failed because of its inputs), 429 (+ Retry-After) = queue full,
  503 = shutting down or state disk full, 413 = body too large, 415 = not JSON. Response headers
  `X-SadTalker-Job-Id` and `X-SadTalker-Output` say which job and file (the body must stay exactly `1`).
  Resubmitting the request_id of a job that failed for a transient reason queues it again.
* `/status` {request_id} or {job_id} (from X-SadTalker-Job-Id) -> the job; 404 if unknown. The two are
  separate namespaces: a request_id equal to some job id never finds that job.
* `/jobs` {limit?} -> most recent jobs first.
* `/system_info` {} -> device, GPU, models, checkpoint size, queue; `workers`: every live render worker on the
  job store (all processes and servers) with its device and current job.
* Issue 15 (serving/webapp.py, a Starlette app mounted below): `POST /generate_upload` (multipart upload, same
  answers as /generate plus 413), `GET /video?request_id=` (the mp4), `POST /check_photo` (faces, usable), and
  the page at `/ui/`. With SADTALKER_API_TOKENS / SADTALKER_API_TOKEN_FILE every endpoint except /livez,
  /readyz, /metrics and /ui needs `Authorization: Bearer <token>` (serving/auth.py).

Python callers: `bentoml.SyncHTTPClient(url).generate(driven_audio=..., source_image=..., option=...)` takes
`str` paths (it JSON-encodes arguments from the published schema with `json.dumps`, which rejects `Path`);
`serving.client.SadTalkerClient`, a subclass of it, also takes `pathlib.Path`. In-process callers may pass
either to `GenerateRequest`.

All configuration is environment variables (see serving/config.py, serving/auth.py, serving/webapp.py). By
default the image's face is NOT detected at submission: a portrait without a face is accepted and its job ends
`failed` with error_kind "no_face" (SADTALKER_CHECK_FACE_ON_SUBMIT=1 checks it first; /check_photo on demand).
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from bentoml.exceptions import BentoMLConfigException
from pydantic import Field
from starlette.responses import JSONResponse

# Imported here, not only lazily where used: a built Bento's src/ is on sys.path only while BentoML imports this
# module, so later lazy imports (deployment hook, request threads, worker) resolve through this package object.
import sadtalker  # noqa: F401
from serving import webapp  # issue 15: uploads, downloads, photo check, the page
from serving.auth import OptionalCORSMiddleware, TokenAuthMiddleware, TokenConfig, cors_origins  # issue 15
from serving.config import ConfigError, ServingConfig
from serving.http_limits import RequestLimits
from serving.jobs import JobNotFound, NotAccepting, QueueFull, RequestConflict
from serving.runtime import Runtime, StartupError, configure_logging, preflight
from serving.schema import INPUT_FILE_FIELDS, GenerateRequest, JobStatus, RequestId, SystemInfo
from serving.store import StoreFull, StoreUnavailable
from serving.uploads import is_spool_path
from serving.validation import RequestInvalid

ACCEPTED = "1"


def _reject(ctx: bentoml.Context, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """An error response. BentoML copies ctx.response's status/headers onto whatever the API returns."""
    ctx.response.status_code = status
    for name, value in (headers or {}).items():
        ctx.response.headers[name] = value
    return JSONResponse(body, status_code=status)


@bentoml.service(
    name="sadtalker",
    # One worker process per GPU (SADTALKER_GPUS), each with its own models on `cuda:<worker index>`; processes
    # rather than threads: no GIL contention between renders, and a crashed/killed worker loses only its job.
    workers=ServingConfig.gpus_from_env(),
    # BentoML exposes that many GPUs to every worker via CUDA_VISIBLE_DEVICES; each worker takes its own index.
    # On a machine without GPUs BentoML only warns; the CUDA check below is what refuses to start.
    resources={"gpu": ServingConfig.gpus_from_env()},
    # Request threads (validation probes files); rendering happens on the worker's own thread.
    threads=4,
    traffic={"timeout": 120},
)
@bentoml.asgi_app(webapp.app, path="/")  # only its own routes match (BentoML mounts passively); see webapp.py
class SadTalkerService:
    @bentoml.on_deployment
    def check_deployment() -> None:  # BentoML calls deployment hooks without an instance
        """Once, before workers spawn: config, CUDA (or SADTALKER_ALLOW_CPU=1), checkpoints, writable dirs."""
        configure_logging()
        try:
            preflight(ServingConfig.from_env())
            TokenConfig.from_env()  # issue 15: a bad token/CORS setting stops `bentoml serve` here, in one line
            cors_origins()
            webapp.WebSettings.from_env()
        except (ConfigError, StartupError) as exc:
            # BentoMLException is printed by the CLI as one line, and `bentoml serve` exits with status 1.
            raise BentoMLConfigException(f"SadTalker cannot start: {exc}") from None

    def __init__(self) -> None:
        configure_logging()
        try:
            # The device check repeats here: the constructor also runs without `bentoml serve` (tests, in-process).
            config = ServingConfig.from_env()
            # BentoML numbers its worker processes from 1 (None outside `bentoml serve`).
            worker_index = (bentoml.server_context.worker_index or 1) - 1
            # Issue 15: uploads are submitted like /generate, with a validator whose only input root is the upload
            # spool (the worker may read it too; /generate's validator never accepts it); the worker starts after
            # the spool cleanup hook is attached.
            self.web = webapp.WebContext.create(config)
            self.runtime = Runtime.start(
                config,
                validator=self.web.validator(),
                extra_input_roots=self.web.extra_input_roots,
                start_worker=False,
                worker_index=worker_index,
            )
            self.web.attach(self.runtime)
            self.runtime.worker.start()
        except (ConfigError, StartupError) as exc:
            raise BentoMLConfigException(f"SadTalker cannot start: {exc}") from None

    def __is_ready__(self) -> bool:
        """/readyz: models loaded (the constructor returned), render thread alive, not shutting down."""
        return self.runtime.ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """SIGTERM: no new jobs; the running job gets SADTALKER_SHUTDOWN_GRACE s; queued jobs wait for restart."""
        self.runtime.shutdown()

    @bentoml.api(route="/generate", input_spec=GenerateRequest)
    def generate(self, *, ctx: bentoml.Context, **fields: Any) -> str:
        """Queue a talking-head render; answers `1` at once (see the module docstring for errors).

        BentoML validated the body against `GenerateRequest` and passes its fields by name; they are taken as a
        whole, so a new request field is declared in serving/schema.py only.
        """
        request = GenerateRequest(**fields)
        for name in INPUT_FILE_FIELDS:
            raw = getattr(request, name)
            # Issue 15: uploads of other clients are not nameable.
            if raw is not None and is_spool_path(self.runtime.config, raw):
                return _reject(
                    ctx, 400, {"error": f"{name}: {raw} is outside the allowed input directories", "field": name}
                )
        try:
            submission = self.runtime.jobs.submit(request)
        except RequestInvalid as exc:
            return _reject(ctx, 400, {"error": str(exc), "field": exc.field})
        except RequestConflict as exc:
            return _reject(ctx, 409, {"error": str(exc), "field": "request_id"})
        except QueueFull as exc:
            return _reject(ctx, 429, {"error": str(exc)}, {"Retry-After": str(exc.retry_after)})
        except (NotAccepting, StoreFull) as exc:
            return _reject(ctx, 503, {"error": str(exc)}, {"Retry-After": "30"})
        ctx.response.headers["X-SadTalker-Job-Id"] = submission.job.id
        ctx.response.headers["X-SadTalker-Output"] = str(submission.job.output_path)
        return ACCEPTED

    @bentoml.api
    def status(
        self,
        request_id: RequestId | None = None,
        job_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None,
        *,
        ctx: bentoml.Context,
    ) -> JobStatus:
        """State, progress %, stage, output path, error and timings of one job: by request_id OR job_id."""
        if (request_id is None) == (job_id is None):
            field = "request_id" if request_id is None else "job_id"
            return _reject(ctx, 400, {"error": f"{field}: give exactly one of request_id and job_id", "field": field})
        try:
            return self.runtime.jobs.status(request_id=request_id, job_id=job_id)
        except JobNotFound as exc:
            return _reject(ctx, 404, {"error": str(exc)})
        except StoreUnavailable as exc:
            return _reject(ctx, 503, {"error": str(exc)}, {"Retry-After": "30"})

    @bentoml.api
    def jobs(self, limit: Annotated[int, Field(ge=1, le=500)] = 20, *, ctx: bentoml.Context) -> list[JobStatus]:
        """The most recent jobs, newest first."""
        try:
            return self.runtime.jobs.recent(limit)
        except StoreUnavailable as exc:
            return _reject(ctx, 503, {"error": str(exc)}, {"Retry-After": "30"})

    @bentoml.api
    def system_info(self) -> SystemInfo:
        """Device, GPU name/memory, models, checkpoint directory size, queue depth."""
        return self.runtime.system_info()


# Added first = outermost. Issue 15: optional CORS (SADTALKER_CORS_ORIGINS) outside everything, so preflights and
# error answers carry its headers; then optional API tokens (SADTALKER_API_TOKENS / SADTALKER_API_TOKEN_FILE), so a
# caller without a token learns nothing else; both are pass-throughs when unset. Then 415/413 before BentoML reads a
# body (serving/http_limits.py; it lets the multipart routes of serving/webapp.py through, which cap their own
# bodies while streaming); the limit is read like every other setting.
SadTalkerService.add_asgi_middleware(OptionalCORSMiddleware)
SadTalkerService.add_asgi_middleware(TokenAuthMiddleware)
SadTalkerService.add_asgi_middleware(RequestLimits, max_body_bytes=ServingConfig.max_body_bytes_from_env())
