"""The interface the worker drives, and how the service builds the implementation.

Production always uses `sadtalker.pipeline.SadTalker`. `SADTALKER_PIPELINE_FACTORY=module:callable`
(DEV/TEST ONLY) swaps in another implementation, e.g. the tests' `tests.fakes:create` (importable when the
server runs from the repository root; it is not in the Bento), so the HTTP contract can be tested end to end
without minutes of CPU rendering.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sadtalker.contracts import ProgressCallback
from serving.config import DEFAULT_PIPELINE_FACTORY, ServingConfig


class Pipeline(Protocol):
    """What `sadtalker.pipeline.SadTalker` offers the service (see its docstring for details)."""

    def generate(
        self,
        source_image: str | Path,
        driven_audio: str | Path,
        output_path: str | Path,
        *,
        progress: ProgressCallback | None = None,
        temp_dir: Path | None = None,
        **request: Any,
    ) -> Path:
        """Render; write ``output_path`` atomically; call ``progress(ProgressReport)`` at each stage and between
        frames, counting the frames written (it raises to stop the render: shutdown, lost lease).

        ``request``: every other field of `serving.schema.JobRequest` (``preset``, ``landmarks``, ...) by name.
        """
        ...


PipelineFactory = Callable[..., Pipeline]
"""Called as ``factory(checkpoint_dir, device, sizes=..., enhancer_max_faces=..., max_audio_seconds=..., precision=...,
compile=...)``."""


def resolve_factory(spec: str | None) -> PipelineFactory:
    """Import ``module:callable`` (default: the real pipeline class)."""
    spec = spec or DEFAULT_PIPELINE_FACTORY
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"{spec} is not callable")
    return factory


def build_pipeline(config: ServingConfig, device: str) -> Pipeline:
    """Load every model once (the expensive part of start-up)."""
    # Compiled kernels persist on the state volume, so a restart reloads them instead of recompiling.  Set before
    # the factory's module is imported: importing it imports inductor, which fills in its own default (/tmp).
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(config.state_dir / "inductor"))
    factory = resolve_factory(config.pipeline_factory)
    return factory(
        config.checkpoint_dir,
        device,
        sizes=(config.render_size,),
        enhancer_max_faces=config.enhancer_max_faces,
        max_audio_seconds=config.max_audio_seconds,
        precision=config.precision,
        compile=config.compile,
    )
