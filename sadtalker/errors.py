"""Typed errors with messages a user can act on. Every stage raises one of these at its boundary."""

from __future__ import annotations


class SadTalkerError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(SadTalkerError, ValueError):
    """The request's inputs cannot be used; ``field`` names which input (e.g. 'source_image')."""

    field: str = "input"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field


class ImageError(InputError):
    """The source image is unreadable, of an unsupported format, or too large."""

    field = "source_image"


class NoFaceError(ImageError):
    """No face was found in the source image."""


class AudioError(InputError):
    """The driving audio is unreadable or of an unsupported format."""

    field = "driven_audio"


class AudioTooShortError(AudioError):
    """The audio is shorter than one video frame (40 ms at 25 fps)."""


class AudioTooLongError(AudioError):
    """The audio is longer than the configured cap."""


class RenderError(SadTalkerError):
    """Rendering or encoding failed for a reason that is not the inputs' fault (e.g. ffmpeg failed)."""


class ReferenceVideoError(InputError):
    """A reference video (``ref_eyeblink`` / ``ref_pose``) is unreadable, empty, too large or shows no face."""

    field = "ref_video"
