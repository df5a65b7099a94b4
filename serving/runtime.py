"""Start-up checks and the assembled service runtime (config, device, models, store, worker, jobs).

Kept free of BentoML so it can be built in-process by tests; `service.py` wraps it in the HTTP API.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.config import ConfigError, ServingConfig
from serving.device import DeviceUnavailable, gpu_info, select_device
from serving.joblog import install_client_error_log_filter, install_job_log_filter
from serving.jobs import JobService
from serving.metrics import JobMetrics
from serving.pipeline_factory import Pipeline, build_pipeline
from serving.schema import SystemInfo, WorkerInfo
from serving.store import JobState, JobStore, StoreError, check_database, open_store
from serving.validation import RequestValidator
from serving.worker import RenderWorker

log = logging.getLogger("sadtalker.serving")

#: Generator sizes and enhancer the production pipeline loads (SadTalker(...) defaults): what start-up verifies.
# Both presets use GFPGAN, so its weights (and facexlib's) are always required.
CHECKPOINT_ENHANCER = True


class StartupError(RuntimeError):
    """The service cannot start; the message is one line saying what is wrong and how to fix it."""


def one_line(message: str) -> str:
    """Collapse a multi-line message (e.g. a per-file checkpoint report) into one log/CLI line."""
    parts = [part.strip().lstrip("- ").strip() for part in message.splitlines()]
    text = ""
    for part in filter(None, parts):
        text += part if not text else (" " if text.endswith(":") else "; ") + part
    return text


def prepare(config: ServingConfig, *, cuda_available: Callable[[], bool] | None = None) -> str:
    """Create the writable directories and pick the device (CUDA, or CPU only with SADTALKER_ALLOW_CPU=1)."""
    try:
        config.prepare_directories()
        if cuda_available is None:
            return select_device(config.allow_cpu)
        return select_device(config.allow_cpu, cuda_available=cuda_available)
    except (ConfigError, DeviceUnavailable) as exc:
        raise StartupError(str(exc)) from None


def assign_gpu(device: str, worker_index: int) -> str:
    """The device of render worker ``worker_index``: `cuda:<index>` (made current for this process), or `cpu`."""
    if device != "cuda":
        return device
    import torch

    require_gpus(worker_index + 1)
    torch.cuda.set_device(worker_index)
    return f"cuda:{worker_index}"


def require_gpus(count: int) -> None:
    """At least ``count`` CUDA devices are visible (one per render worker); else StartupError saying how many."""
    import torch

    visible = torch.cuda.device_count()
    if count > visible:
        raise StartupError(
            f"SADTALKER_GPUS asks for {count} render workers but {visible} GPU(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
            f"set SADTALKER_GPUS to at most {visible}"
        )


def preflight(config: ServingConfig, *, cuda_available: Callable[[], bool] | None = None) -> str:
    """Everything that must hold before workers start; returns the device. Raises StartupError.

    Runs in BentoML's on_deployment hook (once, before any worker process is spawned) so a missing GPU
    or checkpoint stops `bentoml serve` at once with exit status 1, instead of workers crash-looping.
    """
    device = prepare(config, cuda_available=cuda_available)
    if device == "cuda":
        require_gpus(config.gpus)
    check_store(config)
    if config.uses_dev_pipeline:
        log.warning(
            "SADTALKER_PIPELINE_FACTORY=%s: DEV/TEST pipeline, checkpoints not verified", config.pipeline_factory
        )
        return device
    from sadtalker.checkpoints import require_checkpoints
    from sadtalker.weights import CheckpointError

    try:
        require_checkpoints(config.checkpoint_dir, (config.render_size,), include_enhancer=CHECKPOINT_ENHANCER)
    except CheckpointError as exc:
        hint = " (or point SADTALKER_CHECKPOINTS at the directory holding them)"
        raise StartupError(one_line(str(exc)) + hint) from None
    check_compile_toolchain(config)
    return device


def check_compile_toolchain(config: ServingConfig, python_include: str | None = None) -> None:
    """With SADTALKER_COMPILE on, the machine can build torch.compile's kernels (else every worker would fail
    in its constructor, after loading the models, and be restarted)."""
    if not config.compile:
        return
    from sadtalker.render.accel import compile_toolchain_problem

    problem = compile_toolchain_problem(python_include)
    if problem:
        raise StartupError(f"SADTALKER_COMPILE=1 but {problem}; or set SADTALKER_COMPILE=0 (eager, slower)")


def check_store(config: ServingConfig) -> None:
    """The job database is reachable and sound and at this version's layout (migrations run now).

    Done once, before workers start: a corrupt file or an unreachable PostgreSQL stops `serve` with one line
    instead of a worker restart loop.
    """
    try:
        if config.database_url is None:
            check_database(config.database_path)  # SQLite's integrity check
        open_store(config.database_url, config.database_path).close()  # runs pending migrations
    except (StoreError, sqlite3.Error) as exc:
        raise StartupError(one_line(str(exc))) from None


def directory_bytes(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def configure_logging() -> None:
    """Our loggers at INFO (BentoML's root is WARNING) and the job id on every line of a job."""
    logging.getLogger("sadtalker").setLevel(logging.INFO)
    install_job_log_filter()
    install_client_error_log_filter()


@dataclass
class Runtime:
    config: ServingConfig
    device: str
    pipeline: Pipeline
    store: JobStore
    metrics: JobMetrics
    worker: RenderWorker
    jobs: JobService
    started_at: float
    checkpoint_bytes: int

    @classmethod
    def start(
        cls,
        config: ServingConfig,
        *,
        pipeline: Pipeline | None = None,
        metrics: JobMetrics | None = None,
        validator: RequestValidator | None = None,
        cuda_available: Callable[[], bool] | None = None,
        start_worker: bool = True,
        extra_input_roots: Sequence[Path] = (),
        worker_index: int = 0,
    ) -> Runtime:
        """Check the device, load the models once, open the store, recover interrupted jobs, start the worker.

        ``extra_input_roots``: directories the worker may read inputs from besides ``config.input_dirs`` (the
        upload spool, issue 15). Requests reach them only through a validator that allows them (`JobService.submit`
        with the upload validator); the default validator, used by `/generate`, still refuses them.
        ``worker_index``: 0-based index of this render worker on the server (BentoML's worker id - 1); on CUDA it
        renders on GPU ``worker_index`` of the visible ones.
        """
        device = assign_gpu(prepare(config, cuda_available=cuda_available), worker_index)
        started = time.monotonic()
        if pipeline is None:
            log.info("loading models from %s on %s ...", config.checkpoint_dir, device)
            pipeline = build_pipeline(config, device)
            log.info("models loaded in %.1fs", time.monotonic() - started)
        store = open_store(config.database_url, config.database_path)
        metrics = metrics or JobMetrics.create(worker=str(worker_index)).initialise_labels()
        worker = RenderWorker(
            pipeline,
            store,
            metrics,
            temp_root=config.temp_root,
            input_roots=(*config.input_dirs, *extra_input_roots),
            output_dir=config.output_dir,
            max_attempts=config.max_attempts,
            lease_seconds=config.lease_seconds,
            device=device,
        )
        validator = validator or RequestValidator(config)
        # Import the decoders now: the first request should not pay for importing cv2/soundfile.
        validator.preload()
        jobs = JobService(config, store, worker, metrics, validator)
        runtime = cls(
            config=config,
            device=device,
            pipeline=pipeline,
            store=store,
            metrics=metrics,
            worker=worker,
            jobs=jobs,
            started_at=time.time(),
            checkpoint_bytes=directory_bytes(config.checkpoint_dir) if config.checkpoint_dir.is_dir() else 0,
        )
        report = worker.recover()
        log.info(
            "ready on %s as worker %s: %d job(s) queued (%d interrupted by a crash and requeued), outputs in %s",
            device,
            worker.owner,
            store.count(JobState.QUEUED),
            len(report.requeued),
            config.output_dir,
        )
        if start_worker:
            worker.start()
        return runtime

    @property
    def ready(self) -> bool:
        return self.worker.is_alive and not self.worker.stopping

    def shutdown(self) -> None:
        """Stop taking jobs; give the running one `shutdown_grace` s; the rest stays queued in the store."""
        grace = self.config.shutdown_grace
        log.info(
            "shutting down: waiting up to %gs for the running job (job=%s)", grace, self.worker.current_job_id or "-"
        )
        self.worker.stop(grace)
        self.worker.update_queue_gauge()
        counts = self.store.counts()
        pending = counts[JobState.QUEUED] + counts[JobState.RUNNING]
        log.info("shutdown complete; %d job(s) will run at the next start", pending)

    def system_info(self) -> SystemInfo:
        import bentoml
        import torch

        gpu = gpu_info(self.device)
        counts = self.store.counts()
        pipeline_type = type(self.pipeline)
        return SystemInfo(
            device=self.device,
            gpu_name=gpu.name,
            gpu_memory_total_bytes=gpu.total_bytes,
            gpu_memory_free_bytes=gpu.free_bytes,
            models_loaded=True,
            pipeline=f"{pipeline_type.__module__}.{pipeline_type.__qualname__}",
            checkpoint_dir=str(self.config.checkpoint_dir),
            checkpoint_bytes=self.checkpoint_bytes,
            queue_depth=counts[JobState.QUEUED.value],
            running_job=self.worker.current_job_id,
            jobs_by_state=counts,
            max_queue=self.config.max_queue,
            accepting=not self.worker.stopping,
            uptime_seconds=time.time() - self.started_at,
            versions={"torch": torch.__version__, "bentoml": bentoml.__version__},
            precision=self.config.precision,
            compiled=self.config.compile and not self.config.uses_dev_pipeline,
            worker=self.worker.owner,
            workers=self.workers(),
        )

    def workers(self) -> list[WorkerInfo]:
        """Live render workers on the store: announced within the last lease (they announce every few seconds)."""
        now = time.time()
        return [
            WorkerInfo(
                worker=record.owner,
                device=record.device,
                current_job=record.current_job,
                started_at=record.started_at,
                seen_seconds_ago=round(max(0.0, now - record.seen_at), 1),
            )
            for record in self.store.workers(seen_within=max(self.config.lease_seconds, 10.0))
        ]
