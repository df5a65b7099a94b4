"""Inference speed: precision modes, static-shape compilation at load, batch sizes per device.

Two precision modes, chosen per pipeline (``SadTalker(precision=...)``) or per job (``GenerateOptions``):

* ``"exact"`` (default): float32 everywhere; the reference kit's tolerances hold unchanged.
* ``"fast"``: reduced precision where its error does not show: bfloat16 on CPU, float16 on CUDA, per network
  (see :func:`reduced_dtype`; which networks is decided by the stage that owns them).

Compilation (``torch.compile``, inductor, frozen weights) is done ONCE while the models load, for the static
shapes a job will use; :class:`StaticCompiled` then runs the compiled graph for those shapes and plain eager code
for any other shape, so a job never triggers a compilation.  Inductor's cache lives in ``TORCHINDUCTOR_CACHE_DIR``
(the service points it at its state volume), so a restart reloads kernels instead of recompiling them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager, nullcontext
from copy import deepcopy
from typing import Literal, TypeVar

import torch

logger = logging.getLogger(__name__)

Precision = Literal["exact", "fast"]
PRECISIONS: tuple[Precision, ...] = ("exact", "fast")
COMPILE_ENV = "SADTALKER_COMPILE"

# Upper bound of the render batch on a GPU (frames); memory bounds it further, see default_render_batch.
MAX_GPU_RENDER_BATCH = 16
# Working memory budgeted per 256-px frame through dense motion + generator: a conservative estimate (the live
# float32 activations are ~0.2 GiB; cuDNN workspaces and the allocator's slack come on top), 4x at 512 px.
# Not yet measured on a GPU: bench/speed.py --device cuda reports the peak.
RENDER_BYTES_PER_FRAME_256 = 900 * 2**20

R = TypeVar("R")


def check_precision(precision: str) -> Precision:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def reduced_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision of fast mode: float16 on CUDA (tensor cores), bfloat16 elsewhere (AVX512-BF16/AMX)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def fast_channels_last(device: torch.device) -> bool:
    """Whether fast mode runs its networks channels-last (NHWC / NDHWC weights and inputs): on CPU, where
    oneDNN's bf16 convolutions run on AMX tiles and, given NCHW tensors, reorder activations around every
    convolution (bench/networks.py, render: bf16 x1.63-1.67 NCHW vs x1.98-2.05 NHWC over fp32).  Not on CUDA
    (unmeasured).  Exact mode never does: it would change fp32 accumulation order."""
    return device.type == "cpu"


def fast_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``module`` whose convolution weights are ``dtype`` and channels-last, for use under autocast.

    Autocast rounds every convolution weight to ``dtype`` at each call anyway, so the copy computes the same
    thing without those casts; channels-last weights make oneDNN keep activations NHWC through the network (a
    convolution with a channels-last weight returns channels-last).  Other parameters stay as they are."""
    copy = deepcopy(module)
    for sub in copy.modules():
        if isinstance(sub, torch.nn.modules.conv._ConvNd) and sub.weight.ndim in (4, 5):
            sub.weight = torch.nn.Parameter(to_channels_last(sub.weight.detach().to(dtype)), requires_grad=False)
    return copy.eval()


class FastWeights:
    """The fast-mode weights of one network: on CPU a :func:`fast_copy` built on first use (a copy, seconds;
    never a compilation), elsewhere the network itself (autocast alone)."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module = module
        self.device = device
        self._copy: torch.nn.Module | None = None
        self._lock = threading.Lock()

    def get(self) -> torch.nn.Module:
        if not fast_channels_last(self.device):
            return self.module
        if self._copy is not None:  # no lock once built (compiled graphs trace this call)
            return self._copy
        with self._lock:
            if self._copy is None:
                self._copy = fast_copy(self.module, reduced_dtype(self.device))
            return self._copy


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager:
    """Autocast to the reduced dtype in fast mode; nothing in exact mode."""
    if precision == "exact":
        return nullcontext()
    return torch.autocast(device.type, dtype=reduced_dtype(device))


T = TypeVar("T", torch.Tensor, torch.nn.Module)


def to_channels_last(x: T) -> T:
    """``x`` in channels-last memory format: NHWC for 4-d tensors / 2-d convolution weights, NDHWC for 5-d ones
    (oneDNN's AMX and tensor-core convolution kernels want it); other tensors unchanged.  Modules are converted
    in place (their 4-d and 5-d parameters and buffers), tensors returned converted (same values, same shape)."""
    if isinstance(x, torch.Tensor):
        if x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        if x.ndim == 5:
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x
    for module in x.modules():
        for param in module._parameters.values():
            if param is not None and param.ndim in (4, 5):
                param.data = to_channels_last(param.data)
        for key, buffer in module._buffers.items():
            if buffer is not None and buffer.ndim in (4, 5):
                module._buffers[key] = to_channels_last(buffer)
    return x


def compile_from_env(default: bool) -> bool:
    """``SADTALKER_COMPILE`` (1/0/true/false) or ``default`` when unset."""
    raw = os.environ.get(COMPILE_ENV, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{COMPILE_ENV}={raw!r} is not a boolean (use 1 or 0)")


def compile_toolchain_problem(python_include: str | None = None) -> str | None:
    """Why torch.compile cannot build kernels here, or None when it can.

    Inductor writes C++ (CPU kernels; on CUDA, Triton's launcher is C too) and builds it with the system's C++
    compiler against Python's headers.  A slim image lacking either fails the first compilation at load with a
    long traceback; checked up front, it is one line.  ``python_include``: where Python.h should be (default:
    this interpreter's include directory).
    """
    import sysconfig

    from torch._inductor import cpp_builder

    try:
        compiler = cpp_builder.get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001  (inductor raises several kinds when no compiler is found)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no C++ compiler for torch.compile ({first}); install g++"
    include = python_include or sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(include, "Python.h")):
        return (
            f"Python's C headers are missing ({include}/Python.h), which torch.compile builds its kernels against "
            f"(with {compiler}); install the Python development headers (Debian: python3.11-dev)"
        )
    return None


def configure_inductor() -> None:
    """Inductor settings for inference graphs: weights frozen as constants (convolutions prepacked by oneDNN,
    batch norms folded, activations fused into the convolutions)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True


def default_render_batch(device: torch.device, size: int, free_bytes: int | None = None) -> int:
    """Frames per render batch: 1 on CPU (measured faster per frame than 2: the 3D hourglass's working set stays
    in cache), on CUDA as many as free memory allows for half of it, up to MAX_GPU_RENDER_BATCH."""
    if device.type != "cuda":
        return 1
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(device)
    per_frame = RENDER_BYTES_PER_FRAME_256 * (size // 256) ** 2
    return max(1, min(MAX_GPU_RENDER_BATCH, int(free_bytes * 0.5) // per_frame))


def shape_key(*tensors: torch.Tensor) -> tuple[Hashable, ...]:
    return tuple((tuple(t.shape), t.dtype, t.device.type) for t in tensors)


class StaticCompiled:
    """A function compiled for the input shapes it was warmed up with; other shapes run eagerly.

    ``warm_up`` (at load) compiles for one set of example inputs and records their shapes; ``__call__`` uses
    the compiled graph only for recorded shapes, so an unexpected input costs eager speed, never a compilation in
    the middle of a job.  Serialised by a lock: compiled graphs are not re-entrant.

    Dynamo guards on more than shapes: strides and whether a tensor is an inference tensor.  Callers hand over
    whatever layout their library produced (facexlib's ``img2tensor`` gives a transposed, non-contiguous view),
    so inputs are brought to the warm-up's form (contiguous inference tensors) first.  Should a guard still fail
    (another dtype, a changed global), the call runs eagerly, is counted in ``fallbacks`` and logged once: a
    silent fallback once cost ParseNet its whole compilation gain.
    """

    def __init__(self, fn: Callable[..., R], name: str) -> None:
        self.fn = fn
        self.name = name
        self._compiled = torch.compile(fn, dynamic=False)
        self._shapes: set[tuple[Hashable, ...]] = set()
        self._lock = threading.Lock()
        self.enabled = True  # False: always eager (benchmarks compare both in one process)
        self.fallbacks = 0  # calls with a warmed-up shape that still could not use the compiled graph

    @property
    def shapes(self) -> set[tuple[Hashable, ...]]:
        return set(self._shapes) if self.enabled else set()

    def warm_up(self, *inputs: torch.Tensor) -> float:
        """Compile for these inputs' shapes (runs them once); returns the seconds it took."""
        configure_inductor()
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            self._compiled(*(_as_warmed(t) for t in inputs))
            self._shapes.add(shape_key(*inputs))
        seconds = time.perf_counter() - started
        logger.info("compiled %s for %s in %.1f s", self.name, [tuple(t.shape) for t in inputs], seconds)
        return seconds

    def __call__(self, *inputs: torch.Tensor):  # noqa: ANN204  (returns what fn returns)
        if not (self.enabled and shape_key(*inputs) in self._shapes):
            return self.fn(*inputs)
        with self._lock, torch.inference_mode():
            inputs = tuple(_as_warmed(t) for t in inputs)
            try:
                with torch.compiler.set_stance("fail_on_recompile"):
                    return self._compiled(*inputs)
            except RuntimeError as exc:
                if "fail_on_recompile" not in str(exc):
                    raise
                self.fallbacks += 1
                if self.fallbacks == 1:
                    reason = " ".join(str(exc).split("\n")[1:]).strip() or str(exc)
                    logger.warning(
                        "%s: compiled graph not usable for this call, running eagerly: %s", self.name, reason
                    )
        return self.fn(*inputs)


def _as_warmed(t: torch.Tensor) -> torch.Tensor:
    """``t`` as compiled graphs are warmed up with: a contiguous inference tensor (call under inference_mode)."""
    t = t.contiguous()
    return t if t.is_inference() else t.clone()
