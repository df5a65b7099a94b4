"""Reading checkpoint files once and loading their tensors strictly into our modules.

``torch.save`` files are read with ``weights_only=True``: tensors and plain containers, never pickled code. A
published file may also pickle harmless objects (numpy scalars, an optimizer's step counter); the operator admits
those by name with ``SADTALKER_ALLOWED_PICKLE_GLOBALS`` (comma-separated, e.g.
``numpy.core.multiarray.scalar,numpy.dtype``), which are allowed for our loads only (``torch.serialization
.safe_globals``), never by turning weights-only loading off.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from sadtalker.errors import CheckpointError, PickleRefusedError

__all__ = [
    "ENV_ALLOWED_PICKLE_GLOBALS",
    "CheckpointError",
    "PickleRefusedError",
    "allowed_pickle_globals",
    "load_strict",
    "load_torch_file",
    "read_safetensors",
    "read_torch",
    "take_prefix",
]

ENV_ALLOWED_PICKLE_GLOBALS = "SADTALKER_ALLOWED_PICKLE_GLOBALS"
# What torch's weights-only unpickler names in its refusal: a GLOBAL opcode, or a class it was asked to BUILD.
_REFUSED_RE = re.compile(r"GLOBAL ([\w.]+) was not an allowed global|but got <class '([\w.]+)'>")


def _import_global(name: str) -> object:
    """``"numpy.core.multiarray.scalar"`` -> that object (longest importable module prefix, then attributes)."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"no module in {name!r}")


def allowed_pickle_globals(value: str | None = None) -> list[tuple[Callable[..., Any], str]]:
    """The operator's allow-list (``$SADTALKER_ALLOWED_PICKLE_GLOBALS`` unless ``value`` is given) as
    ``(object, name)`` pairs for ``torch.serialization.safe_globals``.

    The name is kept as written: a file pickled under numpy 1 refers to ``numpy.core.multiarray.scalar``, which
    numpy 2 defines in ``numpy._core``; torch matches the name recorded in the file.
    """
    if value is None:
        value = os.environ.get(ENV_ALLOWED_PICKLE_GLOBALS, "")
    allowed: list[tuple[Callable[..., Any], str]] = []
    for name in filter(None, (part.strip() for part in value.split(","))):
        try:
            allowed.append((cast(Callable[..., Any], _import_global(name)), name))
        except (ImportError, AttributeError) as exc:
            raise CheckpointError(f"{ENV_ALLOWED_PICKLE_GLOBALS}: cannot import {name!r} ({exc})") from None
    return allowed


def _refused_globals(path: Path, exc: pickle.UnpicklingError, allowed: set[str]) -> tuple[str, ...]:
    """Every global of ``path`` the weights-only unpickler refuses (all at once when torch can list them)."""
    try:
        listed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) files cannot be scanned; fall back to the one torch named
        listed = []
    refused = [name for name in listed if name not in allowed]
    if not refused:
        refused = [a or b for a, b in _REFUSED_RE.findall(str(exc))]
    return tuple(dict.fromkeys(refused))


def load_torch_file(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` onto the CPU, admitting the operator's allowed globals only.

    Raises ``PickleRefusedError`` with one line naming the file and the refused globals (and the variable that
    admits them); other failures propagate as torch raises them.
    """
    path = Path(path)
    allowed = allowed_pickle_globals()
    entries: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [*allowed]
    try:
        with torch.serialization.safe_globals(entries):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        names = {name for _, name in allowed}
        refused = _refused_globals(path, exc, names)
        if not refused:
            raise
        admit = ",".join([*(name for _, name in allowed), *refused])
        raise PickleRefusedError(
            f"{path}: weights-only loading refuses the pickled global(s) {', '.join(refused)}; if you trust this "
            f"file, admit them by name: {ENV_ALLOWED_PICKLE_GLOBALS}={admit}",
            path=path,
            refused=refused,
        ) from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a whole safetensors file onto the CPU (once; callers split it by prefix)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (run `python -m sadtalker.checkpoints download`)")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several unrelated types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_torch(path: str | Path) -> Any:
    """Read a ``torch.save`` checkpoint (tensors only, no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (run `python -m sadtalker.checkpoints download`)")
    try:
        return load_torch_file(path)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc


def take_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose key starts with ``prefix + '.'``, with that prefix removed."""
    head = prefix + "."
    return {key[len(head) :]: value for key, value in state.items() if key.startswith(head)}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Copy ``state`` into ``module``; any missing/unexpected key or shape mismatch raises.

    ``source`` names the file (and prefix) in error messages, e.g. ``SadTalker_V0.0.2_256.safetensors[generator.]``.
    """
    expected = module.state_dict()
    problems: list[str] = []
    for key in sorted(expected.keys() - state.keys()):
        problems.append(f"missing key {key!r} (expected shape {list(expected[key].shape)})")
    for key in sorted(state.keys() - expected.keys()):
        problems.append(f"unexpected key {key!r} (shape {list(state[key].shape)})")
    for key in sorted(expected.keys() & state.keys()):
        if tuple(expected[key].shape) != tuple(state[key].shape):
            problems.append(
                f"key {key!r}: file has shape {list(state[key].shape)}, model expects {list(expected[key].shape)}"
            )
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        raise CheckpointError(f"{source}: {len(problems)} problem(s): {shown}{more}")
    module.load_state_dict(dict(state), strict=True)
    return module
