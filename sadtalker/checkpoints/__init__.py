"""The official checkpoint files: names and paths, manifest, structural verification, resumable download.

Command line (``--dir`` defaults to ``$SADTALKER_CHECKPOINTS`` or ``checkpoints``)::

    python -m sadtalker.checkpoints download [--dir DIR] [--size 256|512|all] [--mirror URL] [--no-enhancer]
    python -m sadtalker.checkpoints verify   [--dir DIR] [--size 256|512|all] [--no-enhancer]
    python -m sadtalker.checkpoints list     [--size 256|512|all] [--no-enhancer]

Modules: ``files`` (file names, ``CheckpointPaths``: what loaders take), ``manifest`` (every file's URL and
tensor layout, from ``checkpoint_manifest.json``), ``verify`` (layout checks, the start-up gate
``require_checkpoints``), ``download`` (the only network code), ``cli``.

Importing the package loads ``files`` only; the other names below are imported on first use, so a loader that
needs paths does not pull in the HTTP client.
"""

from __future__ import annotations

import importlib
from typing import Any

from sadtalker.checkpoints.files import (
    DEFAULT_DIR,
    ENV_DIR,
    SIZES,
    CheckpointPaths,
    checkpoint_paths,
    normalize_sizes,
)
from sadtalker.errors import CheckpointError, DownloadError, HostUnreachable

__all__ = [
    "DEFAULT_DIR",
    "ENV_DIR",
    "SIZES",
    "CheckpointError",
    "CheckpointFile",
    "CheckpointPaths",
    "DownloadError",
    "HostUnreachable",
    "Manifest",
    "Problem",
    "checkpoint_paths",
    "default_manifest",
    "download_checkpoints",
    "normalize_sizes",
    "require_checkpoints",
    "verify_checkpoints",
]

_LAZY = {
    "CheckpointFile": "manifest",
    "Manifest": "manifest",
    "default_manifest": "manifest",
    "Problem": "verify",
    "require_checkpoints": "verify",
    "verify_checkpoints": "verify",
    "download_checkpoints": "download",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
