"""Output names: `<YYYYmmdd-HHMMSS>_<8 hex>.mp4`, never reused."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from serving.naming import OUTPUT_NAME_PATTERN, allocate_output_path, output_name, partial_files

FIXED = datetime(2026, 1, 2, 3, 4, 5)


def test_name_pattern() -> None:
    assert output_name(FIXED, "0a1b2c3d") == "20260102-030405_0a1b2c3d.mp4"
    path = allocate_output_path(Path("/out"))
    assert path.parent == Path("/out")
    assert OUTPUT_NAME_PATTERN.fullmatch(path.name)
    with pytest.raises(ValueError):
        output_name(FIXED, "XYZ")


def test_many_names_in_the_same_second_are_unique(tmp_path: Path) -> None:
    reserved: set[Path] = set()
    for _ in range(5000):
        path = allocate_output_path(tmp_path, is_reserved=reserved.__contains__, now=lambda: FIXED)
        assert path not in reserved
        reserved.add(path)
    assert len(reserved) == 5000


def test_existing_files_and_reserved_names_are_skipped(tmp_path: Path) -> None:
    tokens = iter(["00000000", "11111111", "22222222"])
    (tmp_path / output_name(FIXED, "00000000")).write_bytes(b"old video")
    reserved = {tmp_path / output_name(FIXED, "11111111")}
    path = allocate_output_path(
        tmp_path, is_reserved=reserved.__contains__, now=lambda: FIXED, token=lambda: next(tokens)
    )
    assert path.name == "20260102-030405_22222222.mp4"
    assert not path.exists()  # no placeholder: the pipeline renames the finished video into place


def test_gives_up_instead_of_looping_forever(tmp_path: Path) -> None:
    (tmp_path / output_name(FIXED, "00000000")).write_bytes(b"")
    with pytest.raises(RuntimeError, match="could not find a free output name"):
        allocate_output_path(tmp_path, now=lambda: FIXED, token=lambda: "00000000")


def test_partial_files_match_only_their_own_job(tmp_path: Path) -> None:
    from serving.naming import partial_files

    mine = tmp_path / "20260102-030405_0a1b2c3d.mp4"
    other = tmp_path / "20260102-030405_99999999.mp4"
    own_partial = tmp_path / ".20260102-030405_0a1b2c3d.5f5f5f5f.partial"
    for path in (own_partial, other, tmp_path / ".20260102-030405_99999999.12345678.partial"):
        path.write_bytes(b"")
    assert partial_files(mine) == [own_partial]


def test_video_in_progress_never_looks_finished(tmp_path: Path) -> None:
    """While the encoder writes, nothing in the output folder matches "*.mp4" (Path.glob matches dot-files too)."""
    import time

    import numpy as np

    from sadtalker.video import VideoWriter

    output = tmp_path / "20260102-030405_0a1b2c3d.mp4"
    frames = np.zeros((50, 32, 32, 3), dtype=np.uint8)
    with VideoWriter(output, num_frames=100, fps=25) as writer:
        writer.write(frames)
        deadline = time.monotonic() + 10
        while not any(tmp_path.iterdir()) and time.monotonic() < deadline:  # ffmpeg creates the file once it starts
            time.sleep(0.05)
        in_progress = sorted(tmp_path.iterdir())
        assert in_progress and list(tmp_path.glob("*.mp4")) == []  # the partial file exists, but not as *.mp4
        assert partial_files(output) == in_progress
        writer.write(frames)
    assert [p.name for p in tmp_path.glob("*.mp4")] == [output.name] and partial_files(output) == []
