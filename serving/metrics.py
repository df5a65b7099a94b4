"""Prometheus metrics of the job queue, exposed on BentoML's `/metrics` next to its HTTP metrics.

BentoML 1.4 serves `/metrics` from prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR,
set in each worker's environment before the service module is imported). In that mode a metric's
values are written to those files whatever registry it is registered with, and the endpoint reads them
back with a MultiProcessCollector: so the metrics only need to be *created* in the worker process.
prometheus_client is imported lazily (inside `create`), as BentoML's docs require, so the import
happens after the multiprocess directory is known.

The render-side metrics (completed, failed, stage and job seconds, frames) carry a `worker` label: the render
worker's index on its server (0..SADTALKER_GPUS-1, i.e. its GPU), stable across restarts, unlike its owner id;
Prometheus' own `instance` label tells the servers apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# Renders take seconds to tens of minutes (CPU dev runs, long audio): buckets up to one hour.
DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, float("inf"))


@dataclass(frozen=True)
class _WorkerLabelled:
    """A metric whose `worker` label is fixed for this process: callers pass only their own labels."""

    metric: Any
    worker: str

    def labels(self, **labels: str) -> Any:
        return self.metric.labels(worker=self.worker, **labels)


@dataclass(frozen=True)
class JobMetrics:
    accepted: Any  # Counter[preset]
    completed: Any  # Counter[preset]
    failed: Any  # Counter[preset, kind]
    queue_depth: Any  # Gauge
    stage_seconds: Any  # Histogram[stage]
    job_seconds: Any  # Histogram[preset, outcome]
    frames_rendered: Any  # Counter[preset]

    def initialise_labels(self, presets: tuple[str, ...] = ("crop", "full")) -> JobMetrics:
        """Export zeros for the known presets, so dashboards and rate() see the series before the first job."""
        for preset in presets:
            self.accepted.labels(preset=preset)
            self.completed.labels(preset=preset)
            self.frames_rendered.labels(preset=preset)
        return self

    @classmethod
    def create(cls, registry: Any = "default", *, namespace: str = "sadtalker", worker: str = "0") -> JobMetrics:
        """Build the metrics in ``registry``: "default" = the right one for this process, None = unregistered.

        Under BentoML (multiprocess mode) "default" means unregistered (see module docstring; registering
        in the global registry would only risk "duplicated timeseries" if a second instance is built in
        the same process). Tests pass their own CollectorRegistry and read values from it.
        """
        import prometheus_client as prom

        if registry == "default":
            registry = None if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else prom.REGISTRY
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}

        def by_worker(metric: Any) -> _WorkerLabelled:
            return _WorkerLabelled(metric, worker)

        return cls(
            accepted=prom.Counter("jobs_accepted", "Jobs accepted by /generate", ["preset"], **common),
            completed=by_worker(
                prom.Counter("jobs_completed", "Jobs rendered successfully", ["preset", "worker"], **common)
            ),
            failed=by_worker(
                prom.Counter(
                    "jobs_failed", "Jobs that ended failed, by failure kind", ["preset", "kind", "worker"], **common
                )
            ),
            # "livemax": with a shared job store every process sees the same depth; max (not sum) is right.
            queue_depth=prom.Gauge(
                "queue_depth",
                "Jobs waiting to be rendered (not counting the running one)",
                multiprocess_mode="livemax",
                **common,
            ),
            stage_seconds=by_worker(
                prom.Histogram(
                    "stage_seconds",
                    "Seconds spent per pipeline stage",
                    ["stage", "worker"],
                    buckets=DURATION_BUCKETS,
                    **common,
                )
            ),
            job_seconds=by_worker(
                prom.Histogram(
                    "job_seconds",
                    "Seconds per job from start of rendering to its end",
                    ["preset", "outcome", "worker"],
                    buckets=DURATION_BUCKETS,
                    **common,
                )
            ),
            frames_rendered=by_worker(
                prom.Counter(
                    "frames_rendered",
                    "Video frames written to the encoder, counted as written (failed renders count theirs too)",
                    ["preset", "worker"],
                    **common,
                )
            ),
        )
