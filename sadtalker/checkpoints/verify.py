"""Structural verification of checkpoint files against the manifest, and the start-up gate.

A file's layout is compared with the manifest without reading its tensor data: safetensors by parsing the header
only, torch files through a memory-mapped ``torch.load``. That catches truncated downloads, wrong files and wrong
model versions in a few seconds, before the pipeline spends a minute loading weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sadtalker.checkpoints.files import SIZES, normalize_sizes
from sadtalker.checkpoints.manifest import (
    ITEMSIZE,
    SAFETENSORS_DTYPES,
    CheckpointFile,
    Layout,
    Manifest,
    TensorSpec,
    default_manifest,
)
from sadtalker.errors import CheckpointError, PickleRefusedError

CHUNK_BYTES = 1 << 20
_MAX_SAFETENSORS_HEADER = 100 << 20  # the real headers are ~160 KB; anything huge means "not safetensors"

ProblemKind = Literal[
    "missing_file",
    "no_permission",
    "unreadable",
    "refused_global",
    "missing_key",
    "unexpected_key",
    "wrong_shape",
    "wrong_dtype",
    "checksum",
]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file; ``key`` names the tensor (or top-level entry) when there is one."""

    file: str
    kind: ProblemKind
    message: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


class _Unreadable(Exception):
    """The file cannot be parsed as its container format at all."""


def read_safetensors_header(path: str | Path) -> dict[str, TensorSpec]:
    """Tensor specs from a safetensors header, without reading tensor data.

    Format: 8-byte little-endian header length N, N bytes of JSON ``{key: {dtype, shape, data_offsets}}``, then
    the data. The offsets also tell the exact file size, which catches truncated downloads.
    """
    path = Path(path)
    file_size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _Unreadable(f"not a safetensors file ({file_size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_SAFETENSORS_HEADER, file_size - 8):
            raise _Unreadable(f"not a safetensors file (header length {header_len}, file size {file_size})")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Unreadable(f"not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise _Unreadable("not a safetensors file (header is not a JSON object)")
    specs: dict[str, TensorSpec] = {}
    data_end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES.get(entry["dtype"], str(entry["dtype"]).lower())
            spec = TensorSpec(tuple(int(d) for d in entry["shape"]), dtype)
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _Unreadable(f"malformed safetensors header entry for {key!r}: {exc}") from exc
        if spec.dtype in ITEMSIZE and end - start != spec.nbytes:
            raise _Unreadable(f"safetensors header: {key!r} spans {end - start} bytes, {spec} needs {spec.nbytes}")
        specs[key] = spec
        data_end = max(data_end, end)
    expected_size = 8 + header_len + data_end
    if file_size != expected_size:
        what = "truncated" if file_size < expected_size else "has trailing bytes"
        raise _Unreadable(f"file is {what}: {file_size} bytes, its header describes {expected_size}")
    return specs


def _is_tensor(value: object) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def read_torch_layout(path: str | Path, layout: Layout) -> tuple[dict[str, TensorSpec | None], list[str]]:
    """Tensor specs of a ``torch.save`` checkpoint (key -> spec, None for a non-tensor entry) + missing top keys.

    Zip-format files are memory-mapped, so no tensor data is read; legacy (pre-1.6) pickles cannot be
    mapped and are read normally. Loaded exactly as the pipeline's loader reads it (``weights.load_torch_file``:
    weights only, plus the operator's allowed pickle globals); a refused global raises ``PickleRefusedError``.
    """
    from sadtalker.weights import load_torch_file

    path = Path(path)
    try:
        obj = load_torch_file(path, mmap=zipfile.is_zipfile(path))
    except (PickleRefusedError, PermissionError):
        raise
    except Exception as exc:  # torch raises many unrelated types for damaged or foreign files
        raise _Unreadable(f"not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    missing_top: list[str] = []
    state: object = obj
    if layout.state_dict_keys or layout.required_top_level_keys:
        if not isinstance(obj, Mapping):
            raise _Unreadable(f"expected a dict at the top level, found {type(obj).__name__}")
        missing_top = [key for key in layout.required_top_level_keys if key not in obj]
        if layout.state_dict_keys:
            present = [key for key in layout.state_dict_keys if key in obj]
            if not present:
                missing_top.insert(0, " or ".join(layout.state_dict_keys))
                return {}, missing_top
            state = obj[present[0]]
    if not isinstance(state, Mapping):
        raise _Unreadable(f"expected a state dict, found {type(state).__name__}")
    specs: dict[str, TensorSpec | None] = {}
    for key, value in state.items():
        key = str(key)
        if layout.strip_key_prefix and key.startswith(layout.strip_key_prefix):
            key = key[len(layout.strip_key_prefix) :]
        specs[key] = (
            TensorSpec(tuple(value.shape), str(value.dtype).removeprefix("torch.")) if _is_tensor(value) else None
        )
    return specs, missing_top


def compare_layout(file: str, found: Mapping[str, TensorSpec | None], layout: Layout) -> list[Problem]:
    """Every difference between the tensors found in a file and the layout, one Problem each."""
    problems: list[Problem] = []
    for key, want in layout.tensors.items():
        if key not in found:
            if not layout.is_optional(key):
                problems.append(Problem(file, "missing_key", f"missing key {key!r} (expected {want})", key))
            continue
        got = found[key]
        if got is None:
            problems.append(Problem(file, "unexpected_key", f"key {key!r} is not a tensor (expected {want})", key))
        elif got.shape != want.shape:
            problems.append(
                Problem(file, "wrong_shape", f"key {key!r}: shape {list(got.shape)}, expected {list(want.shape)}", key)
            )
        elif got.dtype != want.dtype:
            problems.append(Problem(file, "wrong_dtype", f"key {key!r}: dtype {got.dtype}, expected {want.dtype}", key))
    for key in found.keys() - layout.tensors.keys():
        got = found[key]
        problems.append(Problem(file, "unexpected_key", f"unexpected key {key!r} ({got or 'not a tensor'})", key))
    return problems


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | Path, spec: CheckpointFile, *, check_sha256: bool = True) -> list[Problem]:
    """Structural check of one file against its manifest entry (plus its SHA-256 when the manifest has one)."""
    path = Path(path)
    name = spec.name
    if not path.is_file():
        return [Problem(name, "missing_file", f"file not found at {path}")]
    layout = spec.layout
    missing_top: list[str] = []
    try:
        if layout.container == "safetensors":
            found: Mapping[str, TensorSpec | None] = read_safetensors_header(path)
        else:
            found, missing_top = read_torch_layout(path, layout)
    except PermissionError:
        # Typical with mounted volumes: files owned by another user with mode 0600 (the image runs as uid 1034).
        return [Problem(name, "no_permission", f"{path} is not readable by this process (uid {os.getuid()})")]
    except PickleRefusedError as exc:
        return [Problem(name, "refused_global", str(exc))]
    except (_Unreadable, OSError) as exc:
        return [Problem(name, "unreadable", f"{path}: {exc}")]
    problems = [
        Problem(name, "missing_key", f"missing top-level entry {key!r} (the loader reads it)", key)
        for key in missing_top
    ]
    if missing_top and not found:  # no state dict at all: listing every tensor as missing would only be noise
        return problems
    problems += compare_layout(name, found, layout)
    if not problems and check_sha256 and spec.sha256:
        actual = sha256_of(path)
        if actual != spec.sha256.lower():
            problems.append(Problem(name, "checksum", f"SHA-256 {actual} differs from the published {spec.sha256}"))
    return problems


def verify_checkpoints(
    directory: str | Path,
    sizes: Iterable[str | int] = ("256",),
    *,
    include_enhancer: bool = True,
    manifest: Manifest | None = None,
) -> list[Problem]:
    """Problems with the files the pipeline needs for ``sizes`` in ``directory`` (empty list = all good)."""
    manifest = manifest or default_manifest()
    root = Path(directory)
    problems: list[Problem] = []
    for spec in manifest.select(sizes, include_enhancer=include_enhancer):
        problems += verify_file(root / spec.name, spec)
    return problems


def format_problems(problems: Sequence[Problem], *, limit_per_file: int = 10) -> str:
    """Problems grouped by file, at most ``limit_per_file`` lines each (a wrong file can have 1000s)."""
    by_file: dict[str, list[Problem]] = {}
    for problem in problems:
        by_file.setdefault(problem.file, []).append(problem)
    lines: list[str] = []
    for file, items in by_file.items():
        lines.append(f"{file}: {len(items)} problem(s)")
        lines += [f"  - {item.message}" for item in items[:limit_per_file]]
        if len(items) > limit_per_file:
            lines.append(f"  ... and {len(items) - limit_per_file} more")
    return "\n".join(lines)


def fix_command(directory: str | Path, sizes: Iterable[str | int]) -> str:
    size_arg = "all" if set(normalize_sizes(sizes)) == set(SIZES) else ",".join(normalize_sizes(sizes))
    return f"python -m sadtalker.checkpoints download --dir {directory} --size {size_arg}"


def fix_advice(directory: str | Path, sizes: Iterable[str | int], problems: Sequence[Problem]) -> str:
    """What fixes ``problems``: permissions need chmod, refused pickle globals the operator's allow-list (only if
    the file is trusted: see ``sadtalker.weights``), anything else a (re-)download."""
    from sadtalker.weights import ENV_ALLOWED_PICKLE_GLOBALS

    fixes = []
    if any(problem.kind == "no_permission" for problem in problems):
        fixes.append(f"make the files readable by uid {os.getuid()} (e.g. `chmod a+r {directory}/*`)")
    if any(problem.kind == "refused_global" for problem in problems):
        fixes.append(f"if you trust those files, name their pickled globals in {ENV_ALLOWED_PICKLE_GLOBALS}")
    if any(problem.kind not in ("no_permission", "refused_global") for problem in problems):
        fixes.append(f"run `{fix_command(directory, sizes)}` (re-downloads missing or damaged files)")
    return "; ".join(fixes)


def require_checkpoints(
    directory: str | Path,
    sizes: Iterable[str | int] = ("256",),
    *,
    include_enhancer: bool = True,
    manifest: Manifest | None = None,
) -> None:
    """Start-up gate: raise CheckpointError listing every problem and the command that fixes them."""
    problems = verify_checkpoints(directory, sizes, include_enhancer=include_enhancer, manifest=manifest)
    if problems:
        raise CheckpointError(
            f"checkpoint directory {directory} is not usable:\n{format_problems(problems)}\n"
            f"Fix: {fix_advice(directory, sizes, problems)}, "
            f"then `python -m sadtalker.checkpoints verify --dir {directory}`."
        )
