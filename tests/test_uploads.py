"""Streaming multipart into the spool: caps while receiving, field errors, final names, spool cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from serving.uploads import (
    SpoolJanitor,
    UploadLimits,
    UploadRejected,
    finalize,
    is_spool_path,
    receive_upload,
    spool_only,
    spool_root,
)

LIMITS = UploadLimits(max_image_bytes=1000, max_audio_bytes=5000)


def encode(data: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[dict[str, str], bytes]:
    """A real multipart body, as httpx (and so the Python client) sends it."""
    request = httpx.Request("POST", "http://x/generate_upload", data=data, files=files)
    return {k.lower(): v for k, v in request.headers.items()}, request.read()


def receive(spool: Path, headers: dict[str, str], body: bytes, chunk: int = 97, **kwargs):  # noqa: ANN003, ANN201
    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):  # small chunks: parts span many of them
            yield body[start : start + chunk]

    return asyncio.run(receive_upload(headers, stream(), spool, LIMITS, **kwargs))


def test_files_and_fields_are_streamed_into_a_fresh_directory(tmp_path: Path) -> None:
    image, audio = b"\x89PNG" + bytes(range(256)) * 3, b"RIFF" + b"\x01" * 4000
    headers, body = encode(
        {"option": "full", "request_id": "r1"},
        {"source_image": ("Face.JPG", image), "driven_audio": ("a b.wav", audio)},
    )
    upload = receive(tmp_path, headers, body)
    assert upload.directory.parent == tmp_path and upload.directory.name.startswith("incoming-")
    assert (
        upload.files["source_image"].name == "source_image.jpg" and upload.files["source_image"].read_bytes() == image
    )
    assert (
        upload.files["driven_audio"].name == "driven_audio.wav" and upload.files["driven_audio"].read_bytes() == audio
    )
    assert upload.fields == {"option": "full", "request_id": "r1"}


def test_a_file_past_its_cap_is_413_and_nothing_stays(tmp_path: Path) -> None:
    headers, body = encode(
        {"option": "full"}, {"driven_audio": ("a.wav", b"x" * 10), "source_image": ("f.png", b"y" * 1001)}
    )
    with pytest.raises(UploadRejected) as info:
        receive(tmp_path, headers, body)
    assert info.value.status == 413 and info.value.field == "source_image" and "1,000 bytes" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_declared_length_past_all_caps_is_refused_before_reading(tmp_path: Path) -> None:
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(b"chunk")
        yield b"--b\r\n"

    headers = {"content-type": "multipart/form-data; boundary=b", "content-length": str(LIMITS.max_body_bytes + 1)}
    with pytest.raises(UploadRejected) as info:
        asyncio.run(receive_upload(headers, body(), tmp_path, LIMITS))
    assert info.value.status == 413 and read == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "files", "field", "status"),
    [
        ({}, {"source_image": ("f.png", b"img")}, "driven_audio", 400),
        ({"colour": "red"}, {"source_image": ("f.png", b"i"), "driven_audio": ("a.wav", b"a")}, "colour", 400),
        ({"option": "x" * 70_000}, {"source_image": ("f.png", b"i")}, "option", 413),
        ({"source_image": "/srv/in/face.png"}, {"driven_audio": ("a.wav", b"a")}, "source_image", 400),
    ],
)
def test_field_problems_name_the_field(tmp_path: Path, data: dict, files: dict, field: str, status: int) -> None:
    headers, body = encode(data, files)
    with pytest.raises(UploadRejected) as info:
        receive(tmp_path, headers, body)
    assert (info.value.field, info.value.status) == (field, status)
    assert list(tmp_path.iterdir()) == []


def test_not_multipart_or_malformed_is_400(tmp_path: Path) -> None:
    with pytest.raises(UploadRejected, match="multipart/form-data"):
        receive(tmp_path, {"content-type": "application/json"}, b"{}")
    with pytest.raises(UploadRejected, match="malformed|missing") as info:
        receive(tmp_path, {"content-type": "multipart/form-data; boundary=zz"}, b"--zz\r\ngarbage without end")
    assert info.value.status == 400 and list(tmp_path.iterdir()) == []


def test_finalize_names_by_request_id_and_content(tmp_path: Path) -> None:
    def spooled(image: bytes):  # noqa: ANN202
        headers, body = encode({}, {"source_image": ("f.png", image), "driven_audio": ("a.wav", b"audio")})
        return receive(tmp_path, headers, body)

    first = finalize(spooled(b"one"), "rid")
    again = finalize(spooled(b"one"), "rid")  # a retry while the first is still spooled: the same paths
    other = finalize(spooled(b"two"), "rid")
    anonymous = finalize(spooled(b"one"), None)
    assert not first.reused and again.reused and again.files == first.files
    assert other.directory != first.directory and anonymous.directory not in (first.directory, other.directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        d.directory.name for d in (first, other, anonymous)
    )  # the retry's incoming directory is gone


def test_janitor_releases_finished_jobs_and_sweeps_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    for name in ("waiting", "done", "incoming-crashed"):
        (root / name).mkdir(parents=True)
        (root / name / "source_image.png").write_bytes(b"x")
    janitor = SpoolJanitor(root)
    janitor.release(root / "done" / "source_image.png")
    janitor.release(tmp_path / "inputs" / "face.png")  # not an upload: untouched, no error
    assert sorted(p.name for p in root.iterdir()) == ["incoming-crashed", "waiting"]
    removed = janitor.sweep([root / "waiting" / "source_image.png", Path("/srv/in/face.png")])
    assert [p.name for p in removed] == ["incoming-crashed"] and [p.name for p in root.iterdir()] == ["waiting"]


def test_spool_is_an_input_root_only_internally(tmp_path: Path) -> None:
    from test_serving_validation import make_config

    config = make_config(tmp_path)
    assert spool_root(config) == config.state_dir / "uploads"
    assert spool_only(config).input_dirs == (spool_root(config),)
    assert is_spool_path(config, str(spool_root(config) / "abc" / "source_image.png"))
    assert is_spool_path(config, str(config.input_dirs[0] / ".." / "state" / "uploads" / "x"))
    assert not is_spool_path(config, str(config.input_dirs[0] / "face.png"))
