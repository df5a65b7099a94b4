"""Request validation: everything that can be checked cheaply before a job is accepted.

Order per file matters for security: the path is resolved (symlinks, `..`) and checked against the
allowed input roots BEFORE we look at whether it exists, so the API cannot be used to probe which
files exist elsewhere on the server. Then: exists, regular file, readable, size cap, header decodes.

Face detection is deliberately NOT done here: it needs the detector on the GPU, which the render
worker owns; running it on the request path would make `/generate` slow and contend with renders.
An image without a face is accepted and its job ends `failed` with a clear "no face" message.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from serving.config import MIN_AUDIO_SECONDS, ServingConfig
from serving.schema import VIDEO_FIELDS, GenerateRequest, JobRequest

ImageProbe = Callable[[Path], tuple[int, int]]
AudioProbe = Callable[[Path], float]
#: ``probe(path, field, max_seconds, max_pixels)``: raises ``ReferenceVideoError`` for an unusable video.
VideoProbe = Callable[[Path, str, float, int], object]


class RequestInvalid(ValueError):
    """A request field cannot be used; becomes HTTP 400. The message starts with the field name."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def resolve_request_path(raw: str) -> Path:
    """The absolute, symlink-free form of a client path (no existence check: see module docstring)."""
    if "\x00" in raw:
        raise ValueError("contains a NUL byte")
    path = Path(raw)
    if not path.is_absolute():
        # The server's working directory is not something a client can know; refuse rather than guess.
        raise ValueError(f"must be an absolute server-side path, got {raw!r}")
    return Path(os.path.realpath(path))


def fingerprint_of(request: GenerateRequest) -> str:
    """Fingerprint of the raw request (paths resolved leniently), for request_id lookups before validation.

    Equal to the validated request's `JobRequest.fingerprint()` whenever validation succeeds.
    """

    def lenient(raw: str) -> str:
        try:
            return str(resolve_request_path(raw))
        except ValueError:
            return raw

    paths = {name: lenient(raw) for name, raw in JobRequest.from_http(request).input_files().items()}
    return JobRequest.from_http(request, **paths).fingerprint()


def _default_image_probe(path: Path) -> tuple[int, int]:
    from sadtalker.media import probe_image  # lazy: decoders (cv2, PIL) load only where requests are served

    return probe_image(path)


def _default_audio_probe(path: Path) -> float:
    from sadtalker.media import probe_audio_duration

    return probe_audio_duration(path)


def _default_video_probe(path: Path, field: str, max_seconds: float, max_pixels: int) -> object:
    from sadtalker.face.reference import check_reference_video  # header only: ffmpeg reads no frame pixels

    return check_reference_video(path, field=field, max_seconds=max_seconds, max_pixels=max_pixels)


class RequestValidator:
    """Checks a `GenerateRequest` against the configured roots and limits."""

    def __init__(
        self,
        config: ServingConfig,
        *,
        probe_image: ImageProbe = _default_image_probe,
        probe_audio: AudioProbe = _default_audio_probe,
        probe_video: VideoProbe = _default_video_probe,
    ) -> None:
        self._config = config
        self._roots = tuple(Path(os.path.realpath(root)) for root in config.input_dirs)
        self._probe_image = probe_image
        self._probe_audio = probe_audio
        self._probe_video = probe_video

    def preload(self) -> None:
        """Import the default probes' decoders (cv2, soundfile, ...) ahead of the first request."""
        if self._probe_image is _default_image_probe or self._probe_audio is _default_audio_probe:
            import sadtalker.media  # noqa: F401

    def validate(self, request: GenerateRequest) -> JobRequest:
        """Raise RequestInvalid for the first problem found, else return the job's request (paths resolved)."""
        config = self._config
        image = self._check_file("source_image", request.source_image, config.max_image_bytes)
        audio = self._check_file("driven_audio", request.driven_audio, config.max_audio_bytes)
        width, height = self._check_image(image)
        seconds = self._check_audio(audio)
        landmarks = None
        if request.landmarks is not None:
            landmarks = self._check_landmarks(request.landmarks, width, height)
        videos = {}
        for field in VIDEO_FIELDS:
            raw = getattr(request, field)
            if raw is not None:
                videos[field] = str(self._check_video(field, self._check_file(field, raw, config.max_video_bytes)))
        return JobRequest.from_http(
            request,
            source_image=str(image),
            driven_audio=str(audio),
            landmarks=landmarks,
            audio_seconds=seconds,
            **videos,
        )

    def _check_file(self, field: str, raw: str, max_bytes: int) -> Path:
        try:
            path = resolve_request_path(raw)
        except ValueError as exc:
            raise RequestInvalid(field, str(exc)) from None
        if not any(path.is_relative_to(root) for root in self._roots):
            roots = os.pathsep.join(str(root) for root in self._roots)
            raise RequestInvalid(
                field, f"{raw!r} is outside the allowed input directories ({roots}; set SADTALKER_INPUT_DIRS)"
            )
        try:
            info = path.stat()
        except FileNotFoundError:
            raise RequestInvalid(field, f"file not found: {raw!r}") from None
        except OSError as exc:
            raise RequestInvalid(field, f"cannot access {raw!r}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(info.st_mode):
            raise RequestInvalid(field, f"{raw!r} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise RequestInvalid(field, f"{raw!r} is not a regular file")
        try:
            # os.access can disagree with reality (ACLs, root); opening is the real test.
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise RequestInvalid(field, f"{raw!r} is not readable by the service ({exc.strerror or exc})") from None
        if info.st_size == 0:
            raise RequestInvalid(field, f"{raw!r} is empty")
        if info.st_size > max_bytes:
            raise RequestInvalid(field, f"{raw!r} is {info.st_size:,} bytes; the limit is {max_bytes:,} bytes")
        return path

    def _check_image(self, path: Path) -> tuple[int, int]:
        from sadtalker.errors import InputError

        try:
            width, height = self._probe_image(path)
        except InputError as exc:
            raise RequestInvalid("source_image", f"cannot be used as an image: {exc}") from None
        if width <= 0 or height <= 0:
            raise RequestInvalid("source_image", f"image has no pixels ({width}x{height})")
        pixels = width * height
        if pixels > self._config.max_image_pixels:
            raise RequestInvalid(
                "source_image",
                f"image is {width}x{height} = {pixels:,} pixels; the limit is {self._config.max_image_pixels:,}",
            )
        return width, height

    def _check_audio(self, path: Path) -> float:
        from sadtalker.errors import InputError

        try:
            seconds = float(self._probe_audio(path))
        except InputError as exc:
            raise RequestInvalid("driven_audio", f"cannot be used as audio: {exc}") from None
        if not seconds >= MIN_AUDIO_SECONDS:  # also catches NaN
            raise RequestInvalid(
                "driven_audio", f"audio is {seconds * 1000:.0f} ms long; at least 40 ms (one video frame) is needed"
            )
        if seconds > self._config.max_audio_seconds:
            raise RequestInvalid(
                "driven_audio",
                f"audio is {seconds:.1f} s long; the limit is {self._config.max_audio_seconds:g} s",
            )
        return seconds

    def _check_video(self, field: str, path: Path) -> Path:
        """Format, frame size and duration from the header; faces are looked for at render time (the detector
        is the worker's), where a video without one fails the job with kind "reference_video"."""
        from sadtalker.errors import InputError

        config = self._config
        try:
            self._probe_video(path, field, config.max_video_seconds, config.max_image_pixels)
        except InputError as exc:
            raise RequestInvalid(field, str(exc).removeprefix(f"{field}: ")) from None
        return path

    @staticmethod
    def _check_landmarks(points: list[list[float]], width: int, height: int) -> tuple[tuple[float, float], ...]:
        # Detectors put a few points slightly outside the frame (chin, jaw); a quarter of the image beyond
        # the border is generous for that and still catches coordinates of the wrong image or scale.
        margin_x, margin_y = 0.25 * width, 0.25 * height
        for index, (x, y) in enumerate(points):
            if not (-margin_x <= x <= width + margin_x and -margin_y <= y <= height + margin_y):
                raise RequestInvalid(
                    "landmarks", f"point {index} ({x:g}, {y:g}) lies outside the {width}x{height} source image"
                )
        return tuple((float(x), float(y)) for x, y in points)
