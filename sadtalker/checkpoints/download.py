"""Resumable, verified download of the checkpoint files (the only code here that touches the network)."""

from __future__ import annotations

import contextlib
import fcntl  # POSIX only, like the service
import http.client
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from sadtalker.checkpoints.manifest import CheckpointFile, Manifest, default_manifest
from sadtalker.checkpoints.verify import CHUNK_BYTES, format_problems, verify_file
from sadtalker.errors import DownloadError, HostUnreachable

__all__ = ["ENV_MIRROR", "DownloadError", "DownloadResult", "HostUnreachable", "download_checkpoints", "download_file"]

log = logging.getLogger(__name__)

ENV_MIRROR = "SADTALKER_CHECKPOINT_BASE_URL"


class _Transient(Exception):
    """A failure worth retrying (connection cut, timeout, HTTP 5xx/429)."""


@dataclass(frozen=True)
class DownloadResult:
    name: str
    path: Path
    status: Literal["present", "downloaded"]
    bytes_fetched: int = 0


@dataclass
class _Transfer:
    """State of one file's download across attempts."""

    name: str
    url: str
    part: Path
    handle: IO[bytes]
    bar: Any  # tqdm
    fetched: int = 0
    total: int | None = None


def resolve_url(spec: CheckpointFile, mirror: str | None = None) -> str:
    """The official URL, or ``<mirror>/<file name>`` when a mirror base URL is given."""
    return f"{mirror.rstrip('/')}/{spec.name}" if mirror else spec.url


@contextlib.contextmanager
def _locked_part(part: Path) -> Iterator[IO[bytes]]:
    """Open (creating) ``<name>.part`` for appending, exclusively: two processes must not write the same file."""
    handle = open(part, "a+b")
    locked = False
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DownloadError(f"{part}: another process is downloading this file; wait for it") from exc
        locked = True
        yield handle
    finally:
        # A failed first attempt leaves an empty .part: remove it (one with data is kept for resuming). Only the
        # lock holder may: an empty .part of another process is that process's download just starting.
        if locked and part.exists() and handle.seek(0, os.SEEK_END) == 0:
            part.unlink()
        handle.close()


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _fetch_once(transfer: _Transfer, *, timeout: float) -> None:
    """One HTTP request continuing ``transfer.part`` from its current size; raises _Transient to retry."""
    handle = transfer.handle
    offset = handle.seek(0, os.SEEK_END)
    headers = {"User-Agent": "sadtalker-checkpoints/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(transfer.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range beyond the end: the .part is either complete already or from a different (smaller) file.
            total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                transfer.total = offset
                return
            handle.truncate(0)
            raise _Transient(f"server refused to resume at byte {offset}; restarting") from exc
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"{transfer.name}: HTTP {exc.code} {exc.reason} from {transfer.url}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.gaierror):
            # The name does not resolve (no network, no DNS): retrying in a second will not change that.
            host = urllib.parse.urlsplit(transfer.url).hostname or transfer.url
            message = f"{transfer.name}: cannot resolve {host} ({reason.strerror or reason})"
            raise HostUnreachable(host, message) from exc
        # Not worth retrying: an unknown URL scheme, or a file:// mirror without the file.
        if isinstance(exc, urllib.error.URLError) and (
            isinstance(reason, FileNotFoundError) or not isinstance(reason, OSError | TimeoutError)
        ):
            raise DownloadError(f"{transfer.name}: cannot fetch {transfer.url}: {reason}") from exc
        raise _Transient(str(reason)) from exc
    with response:
        status = getattr(response, "status", 200)
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if offset and (status != 206 or _content_range_start(response.headers.get("Content-Range")) != offset):
            log.info("%s: the server did not resume at byte %d; starting over", transfer.name, offset)
            handle.truncate(0)
            offset = 0
        transfer.total = offset + length if length is not None else None
        transfer.bar.reset(total=transfer.total)
        transfer.bar.update(offset)
        received = 0
        try:
            while chunk := response.read(CHUNK_BYTES):
                handle.write(chunk)
                received += len(chunk)
                transfer.fetched += len(chunk)
                transfer.bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead of a chunked body
            handle.flush()
            raise _Transient(f"connection lost after {offset + received} bytes ({exc})") from exc
        finally:
            handle.flush()
    if length is not None and received < length:
        # http.client returns a short body silently when the peer closes early.
        raise _Transient(f"connection closed after {offset + received} of {offset + length} bytes")


def _check_disk_space(directory: Path, needed: int, name: str) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise DownloadError(f"{name}: needs {needed / 1e6:.0f} MB more, only {free / 1e6:.0f} MB free in {directory}")


def download_file(
    spec: CheckpointFile,
    directory: str | Path,
    *,
    mirror: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress: bool = True,
) -> DownloadResult:
    """Download one file into ``directory`` unless a valid copy is there; verify it before it gets its name.

    Bytes go to ``<name>.part``, which a later run resumes with an HTTP Range request. Attempts that received
    data do not use up ``retries`` (each one makes progress); attempts that failed without data do, with
    exponential ``backoff`` seconds between them. A finished ``.part`` that fails verification is deleted.
    """
    from tqdm import tqdm

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / spec.name
    if final.exists():
        problems = verify_file(final, spec)
        if not problems:
            log.info("%s: present and valid, skipped", spec.name)
            return DownloadResult(spec.name, final, "present")
        log.warning("%s: present but invalid (%s); downloading it again", spec.name, problems[0].message)
    part = root / (spec.name + ".part")
    url = resolve_url(spec, mirror)
    with _locked_part(part) as handle:
        if final.exists() and not verify_file(final, spec):  # another process finished it meanwhile
            return DownloadResult(spec.name, final, "present")
        if handle.seek(0, os.SEEK_END) == 0:
            _check_disk_space(root, spec.approx_bytes, spec.name)
        else:
            log.info("%s: resuming at byte %d", spec.name, handle.tell())
        # disable=None: bars only when stderr is a terminal (CI logs would fill with carriage returns).
        bar_off = None if progress else True
        with tqdm(desc=spec.name, unit="B", unit_scale=True, unit_divisor=1024, disable=bar_off) as bar:
            transfer = _Transfer(name=spec.name, url=url, part=part, handle=handle, bar=bar)
            failures = 0
            while True:
                before = transfer.fetched
                try:
                    _fetch_once(transfer, timeout=timeout)
                    break
                except _Transient as exc:
                    if transfer.fetched == before:
                        failures += 1
                    if failures > retries:
                        raise DownloadError(
                            f"{spec.name}: giving up after {failures} failed attempt(s) at {url}: {exc}. "
                            "Run the command again to retry; it resumes from any partial file."
                        ) from exc
                    log.warning("%s: %s; retrying", spec.name, exc)
                    if transfer.fetched == before:
                        time.sleep(backoff * 2 ** (failures - 1))
        problems = verify_file(part, spec)
        if problems:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{spec.name}: the downloaded file from {url} is not the expected checkpoint; deleted it:\n"
                + format_problems(problems)
            )
        os.replace(part, final)
    log.info("%s: downloaded and verified (%d bytes fetched)", spec.name, transfer.fetched)
    return DownloadResult(spec.name, final, "downloaded", transfer.fetched)


def download_checkpoints(
    directory: str | Path,
    sizes: Iterable[str | int] = ("256",),
    *,
    include_enhancer: bool = True,
    manifest: Manifest | None = None,
    mirror: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress: bool = True,
) -> list[DownloadResult]:
    """Download every file needed for ``sizes``; tries them all, then raises one DownloadError for all failures."""
    manifest = manifest or default_manifest()
    results: list[DownloadResult] = []
    errors: list[str] = []
    unreachable: set[str] = set()
    for spec in manifest.select(sizes, include_enhancer=include_enhancer):
        host = urllib.parse.urlsplit(resolve_url(spec, mirror)).hostname
        if host in unreachable and not (Path(directory) / spec.name).exists():
            errors.append(f"{spec.name}: not attempted, {host} cannot be resolved")
            continue
        try:
            results.append(
                download_file(
                    spec,
                    directory,
                    mirror=mirror,
                    retries=retries,
                    timeout=timeout,
                    backoff=backoff,
                    progress=progress,
                )
            )
        except HostUnreachable as exc:
            unreachable.add(exc.host)
            errors.append(str(exc))
        except DownloadError as exc:
            errors.append(str(exc))
    if errors:
        hint = (
            f"\nNo network or DNS for {', '.join(sorted(unreachable))}: fetch the files on a connected machine "
            f"(same command) and copy them into {directory}, or set {ENV_MIRROR} to a mirror."
            if unreachable
            else ""
        )
        raise DownloadError(f"{len(errors)} file(s) failed:\n" + "\n".join(errors) + hint)
    return results
