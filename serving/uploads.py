"""Uploads for remote clients: multipart files streamed into a spool directory, with size caps while receiving.

`/generate_upload` (serving/webapp.py) parses the request body chunk by chunk as it arrives (python-multipart's
streaming parser: nothing is buffered in memory or in /tmp) and writes each file part straight into
`$SADTALKER_STATE_DIR/uploads/incoming-<random>/`. A file part past its cap (SADTALKER_MAX_IMAGE_BYTES /
SADTALKER_MAX_AUDIO_BYTES, SADTALKER_MAX_VIDEO_BYTES for the optional `ref_eyeblink`/`ref_pose`: the caps `/generate`
applies) stops the parse: the directory is deleted and the
answer is 413 naming the field. A declared Content-Length above the sum of the caps is refused before reading.

A complete upload is renamed to its final directory and submitted like `/generate`: the job's paths point into
the spool, which only the upload validator accepts as an input root (`spool_only`); `/generate`'s validator
does not, and `/generate` refuses spool paths up front (`is_spool_path`, also when an input root contains the
state directory), so JSON callers cannot name other clients' uploads.

With a request_id the final directory name is derived from the request_id and the files' SHA-256, so a retried
upload of the same files gets the same paths, hence the same request fingerprint, and is recognised as a
duplicate (answer `1`, nothing rendered twice); other files under the same request_id get other paths (409).

Spooled files are deleted when their job ends, completed or failed (`SpoolJanitor.release`, called by the
render worker's job-finished hook), when the submission is refused or was a duplicate of a completed job, and at
start-up for every directory no queued or live running job refers to (`SpoolJanitor.sweep`). A job requeued
(shutdown, expired lease) keeps its files. Resubmitting the request_id of a job that failed for a transient
reason re-creates the same directory (same request_id and files) and queues the job again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from serving.config import ServingConfig
from serving.schema import ANGLE_FIELDS, INPUT_FILE_FIELDS, REQUIRED_FILE_FIELDS, VIDEO_FIELDS

log = logging.getLogger("sadtalker.serving.uploads")

FILE_FIELDS = INPUT_FILE_FIELDS  # source_image, driven_audio required; ref_eyeblink, ref_pose optional
# landmarks and the angle lists are JSON text (e.g. input_yaw='[-30, 30]'), like the JSON API's values.
TEXT_FIELDS = ("option", "request_id", "landmarks", *ANGLE_FIELDS)
MAX_TEXT_FIELD_BYTES = 64 * 1024  # 68 landmark pairs as JSON are ~2 KB
#: After a cap is hit, up to this much of the rest of the body is read and discarded (not stored) so the client,
#: still sending, reads the 413 instead of a reset connection; a longer body gets the 413 and a closed connection.
DRAIN_AFTER_REJECT_BYTES = 16 * 1024 * 1024
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


class UploadRejected(Exception):
    """The upload cannot be used: HTTP `status` (400 or 413); the message starts with the field name."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status = status
        self.field = field


def spool_root(config: ServingConfig) -> Path:
    """Where uploads live: under the state directory, outside the input roots and the output directory."""
    return config.state_dir / "uploads"


def spool_only(config: ServingConfig) -> ServingConfig:
    """The config the upload validator uses: the spool is its only input root (the render worker also reads
    it: `Runtime.start(extra_input_roots=)`); `/generate`'s validator never sees it."""
    return dataclasses.replace(config, input_dirs=(spool_root(config),))


def is_spool_path(config: ServingConfig, raw: str) -> bool:
    """True if a client-given path resolves into the spool (refused on `/generate`)."""
    try:
        resolved = Path(os.path.realpath(raw))
    except (OSError, ValueError):
        return False
    return resolved.is_relative_to(os.path.realpath(spool_root(config)))


@dataclass(frozen=True)
class UploadLimits:
    max_image_bytes: int
    max_audio_bytes: int
    max_video_bytes: int = 0  # 0: reference videos (ref_eyeblink/ref_pose) add nothing to the body cap

    @classmethod
    def from_config(cls, config: ServingConfig) -> UploadLimits:
        return cls(config.max_image_bytes, config.max_audio_bytes, config.max_video_bytes)

    def cap(self, name: str) -> int:
        if name == "source_image":
            return self.max_image_bytes
        if name in VIDEO_FIELDS:
            return self.max_video_bytes
        return self.max_audio_bytes

    @property
    def max_body_bytes(self) -> int:
        """Every file at its cap, plus the text fields and multipart framing."""
        files = self.max_image_bytes + self.max_audio_bytes + len(VIDEO_FIELDS) * self.max_video_bytes
        return files + len(TEXT_FIELDS) * MAX_TEXT_FIELD_BYTES + 64 * 1024


@dataclass
class SpooledUpload:
    directory: Path
    files: dict[str, Path] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    reused: bool = False  # finalize found the same files already spooled for a waiting job: never discard

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    size: int = 0
    sink: BinaryIO | None = None
    digest: Any = None
    text: bytearray = field(default_factory=bytearray)


class _Receiver:
    """python-multipart callbacks writing file parts into the spool directory as they arrive."""

    def __init__(self, upload: SpooledUpload, limits: UploadLimits) -> None:
        self.upload = upload
        self.limits = limits
        self.part = _Part()
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self.header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.header_value.extend(data[start:end]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.headers = {}

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_name).lower()] = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        disposition, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or not name:
            raise UploadRejected(400, "body", "every multipart part needs Content-Disposition: form-data; name=...")
        if name not in FILE_FIELDS and name not in TEXT_FIELDS:
            allowed = ", ".join((*FILE_FIELDS, *TEXT_FIELDS))
            raise UploadRejected(400, name, f"unknown field; expected {allowed}")
        if name in self.upload.files or name in self.upload.fields:
            raise UploadRejected(400, name, "given twice")
        filename = params.get(b"filename")
        self.part = _Part(name=name, filename=None if filename is None else filename.decode("utf-8", "replace"))
        if name in FILE_FIELDS:
            if filename is None:
                raise UploadRejected(400, name, "must be sent as a file (multipart part with a filename)")
            suffix = Path(self.part.filename or "").suffix
            path = self.upload.directory / f"{name}{suffix.lower() if _SAFE_SUFFIX.fullmatch(suffix) else ''}"
            self.part.sink = open(path, "xb")  # noqa: SIM115 (closed in on_part_end or by close())
            self.part.digest = hashlib.sha256()
            self.upload.files[name] = path

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        chunk = data[start:end]
        part.size += len(chunk)
        if part.sink is not None:
            cap = self.limits.cap(part.name)
            if part.size > cap:
                raise UploadRejected(413, part.name, f"the upload is larger than the limit of {cap:,} bytes")
            part.sink.write(chunk)
            part.digest.update(chunk)
        else:
            if part.size > MAX_TEXT_FIELD_BYTES:
                raise UploadRejected(413, part.name, f"longer than {MAX_TEXT_FIELD_BYTES:,} bytes")
            part.text.extend(chunk)

    def on_part_end(self) -> None:
        part = self.part
        if part.sink is not None:
            part.sink.close()
            part.sink = None
            self.upload.sha256[part.name] = part.digest.hexdigest()
        elif part.name:
            try:
                self.upload.fields[part.name] = part.text.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadRejected(400, part.name, "is not UTF-8 text") from None

    def close(self) -> None:
        if self.part.sink is not None:
            self.part.sink.close()


async def receive_upload(
    headers: dict[str, str],
    body: AsyncIterator[bytes],
    spool: Path,
    limits: UploadLimits,
    *,
    required: tuple[str, ...] = REQUIRED_FILE_FIELDS,
) -> SpooledUpload:
    """Stream a multipart/form-data body into a new spool directory; raises UploadRejected (directory removed)."""
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.concurrency import run_in_threadpool

    content_type, params = parse_options_header(headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadRejected(400, "body", "send the files as multipart/form-data (e.g. curl -F source_image=@face.png)")
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise UploadRejected(
            413, "body", f"the request is {int(declared):,} bytes; uploads are limited to {limits.max_body_bytes:,}"
        )
    spool.mkdir(parents=True, exist_ok=True)
    upload = SpooledUpload(spool / f"incoming-{secrets.token_hex(12)}")
    upload.directory.mkdir()
    receiver = _Receiver(upload, limits)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]  # a plain dict of the callbacks
    total = 0
    try:
        async for chunk in body:
            total += len(chunk)
            if total > limits.max_body_bytes:
                raise UploadRejected(413, "body", f"uploads are limited to {limits.max_body_bytes:,} bytes")
            # In a worker thread: the callbacks write to disk, which must not stall the event loop.
            await run_in_threadpool(parser.write, chunk)
        parser.finalize()
    except UploadRejected:
        receiver.close()
        upload.discard()
        await _drain(body)
        raise
    except Exception as exc:  # malformed multipart framing, client gone, disk full ...
        from python_multipart.exceptions import FormParserError

        receiver.close()
        upload.discard()
        if isinstance(exc, FormParserError):
            raise UploadRejected(400, "body", f"malformed multipart body ({exc})") from None
        raise
    for name in required:
        if name not in upload.files:
            upload.discard()
            raise UploadRejected(400, name, "missing: attach the file as a multipart part named " + name)
    return upload


async def _drain(body: AsyncIterator[bytes]) -> None:
    drained = 0
    try:
        async for chunk in body:
            drained += len(chunk)
            if drained > DRAIN_AFTER_REJECT_BYTES:
                return
    except Exception:  # the client gave up (ClientDisconnect): nothing left to read
        return


def finalize(upload: SpooledUpload, request_id: str | None) -> SpooledUpload:
    """Move a received upload to its final directory (content-addressed when there is a request_id)."""
    if request_id is None:
        name = secrets.token_hex(16)
    else:
        # Only the files sent (a two-file upload keys exactly as before the optional reference videos existed).
        sent = (n for n in FILE_FIELDS if n in upload.files)
        key = "\x00".join((request_id, *(f"{n}={upload.sha256[n]}:{upload.files[n].name}" for n in sent)))
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
    final = upload.directory.parent / name
    reused = False
    try:
        os.rename(upload.directory, final)
    except OSError:
        # The same files under the same request_id are already spooled (a retry while the job waits): use those.
        upload.discard()
        reused = True
    files = {field_name: final / path.name for field_name, path in upload.files.items()}
    return SpooledUpload(final, files, dict(upload.sha256), dict(upload.fields), reused=reused)


class SpoolJanitor:
    """Deletes spool directories whose job has ended or no longer exists."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def directory_of(self, source_image: Path | str) -> Path | None:
        """The spool directory a job's input lies in, or None if it is not an upload."""
        path = Path(os.path.realpath(source_image))
        if path.parent.parent == self.root:
            return path.parent
        return None

    def release(self, source_image: Path | str) -> None:
        """A job ended (completed or failed): delete its uploaded files."""
        directory = self.directory_of(source_image)
        if directory is not None and directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            log.info("removed uploaded inputs %s", directory)

    def sweep(self, live_inputs: Iterable[Path | str]) -> list[Path]:
        """At start-up: delete every spool entry no waiting job refers to; returns what was removed."""
        if not self.root.is_dir():
            return []
        keep = {directory for directory in map(self.directory_of, live_inputs) if directory is not None}
        removed = []
        for entry in self.root.iterdir():
            if entry in keep:
                continue
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
        if removed:
            log.info("removed %d spooled upload(s) without a waiting job", len(removed))
        return removed
