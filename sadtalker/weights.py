"""Reading checkpoint files once and loading their tensors strictly into our modules."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not match the module that loads it."""


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


def read_torch(path: str | Path) -> dict:
    """Read a ``torch.save`` checkpoint (tensors only, no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (run `python -m sadtalker.checkpoints download`)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc


def take_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose key starts with ``prefix + '.'``, with that prefix removed."""
    head = prefix + "."
    return {key[len(head):]: value for key, value in state.items() if key.startswith(head)}


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
