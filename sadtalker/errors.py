"""Typed errors with messages a user can act on. Every stage raises one of these at its boundary.

Each class names its failure ``kind``: the label the service reports for a failed job (``/status``, the
``sadtalker_jobs_failed_total{kind}`` metric). Kinds are distinct per class, so a subclass never hides behind
its parent's label:

===================== ==================== ==============================================================
kind                  class                meaning
===================== ==================== ==============================================================
``internal``          SadTalkerError       anything not more specific (also: an unexpected exception)
``input``             InputError           a request input cannot be used
``image``             ImageError           the source image is unreadable, unsupported or too large
``no_face``           NoFaceError          no face found in the source image
``audio``             AudioError           the driving audio is unreadable or unsupported
``audio_too_short``   AudioTooShortError   shorter than one video frame
``audio_too_long``    AudioTooLongError    longer than the configured cap
``render``            RenderError          rendering or encoding failed (not the inputs' fault)
``compile``           CompileUnavailableError  compile=True but torch.compile cannot build kernels here
``checkpoint``        CheckpointError      a checkpoint file is missing, unreadable or does not match
``checkpoint_pickle`` PickleRefusedError   a checkpoint pickles objects ``weights_only`` loading refuses
``download``          DownloadError        a checkpoint file could not be downloaded
``host_unreachable``  HostUnreachable      a download host's name does not resolve
``reference_video``   ReferenceVideoError  a reference video (ref_eyeblink/ref_pose) is unusable
===================== ==================== ==============================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class SadTalkerError(Exception):
    """Base class of every error this package raises on purpose."""

    kind: ClassVar[str] = "internal"


class InputError(SadTalkerError, ValueError):
    """The request's inputs cannot be used; ``field`` names which input (e.g. 'source_image')."""

    kind: ClassVar[str] = "input"
    field: str = "input"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field


class ImageError(InputError):
    """The source image is unreadable, of an unsupported format, or too large."""

    kind: ClassVar[str] = "image"
    field = "source_image"


class NoFaceError(ImageError):
    """No face was found in the source image."""

    kind: ClassVar[str] = "no_face"


class AudioError(InputError):
    """The driving audio is unreadable or of an unsupported format."""

    kind: ClassVar[str] = "audio"
    field = "driven_audio"


class AudioTooShortError(AudioError):
    """The audio is shorter than one video frame (40 ms at 25 fps)."""

    kind: ClassVar[str] = "audio_too_short"


class AudioTooLongError(AudioError):
    """The audio is longer than the configured cap."""

    kind: ClassVar[str] = "audio_too_long"


class RenderError(SadTalkerError):
    """Rendering or encoding failed for a reason that is not the inputs' fault (e.g. ffmpeg failed)."""

    kind: ClassVar[str] = "render"


class CompileUnavailableError(SadTalkerError, RuntimeError):
    """``compile=True`` on a machine where torch.compile cannot build kernels (no C++ compiler or Python headers)."""

    kind: ClassVar[str] = "compile"


class CheckpointError(SadTalkerError, RuntimeError):
    """A checkpoint file is missing, unreadable, or does not match the module that loads it."""

    kind: ClassVar[str] = "checkpoint"


class PickleRefusedError(CheckpointError):
    """A ``torch.save`` file pickles objects (``refused``: their global names) that weights-only loading refuses."""

    kind: ClassVar[str] = "checkpoint_pickle"

    def __init__(self, message: str, *, path: Path, refused: tuple[str, ...]) -> None:
        super().__init__(message)
        self.path = path
        self.refused = refused


class DownloadError(CheckpointError):
    """A file could not be downloaded, or what arrived is not the expected file."""

    kind: ClassVar[str] = "download"


class HostUnreachable(DownloadError):
    """A download host's name does not resolve; no file from it can be fetched now."""

    kind: ClassVar[str] = "host_unreachable"

    def __init__(self, host: str, message: str) -> None:
        super().__init__(message)
        self.host = host


class ReferenceVideoError(InputError):
    """A reference video (``ref_eyeblink`` / ``ref_pose``) is unreadable, empty, too large or shows no face."""

    kind: ClassVar[str] = "reference_video"
    field = "ref_video"
