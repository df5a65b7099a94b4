"""The output-name pattern the service and tests rely on, checked against literal names (not against itself)."""

from __future__ import annotations

import pytest
from helpers import is_output_name

from serving.naming import OUTPUT_NAME_PATTERN

GOOD = ["20260102-030405_0a1b2c3d.mp4", "19991231-235959_ffffffff.mp4", "20240229-000000_00000000.mp4"]
BAD = [
    "20260102-030405_0A1B2C3D.mp4",  # upper-case hex
    "20260102-030405_0a1b2c3.mp4",  # 7 hex digits
    "20260102-030405_0a1b2c3d0.mp4",  # 9
    "20260102_030405_0a1b2c3d.mp4",  # wrong separator
    "2026010-030405_0a1b2c3d.mp4",  # short date
    "20260102-030405_0a1b2c3d.mp4.partial",
    ".20260102-030405_0a1b2c3d.5f5f5f5f.partial.mp4",  # a render's temporary file
    "20260102-030405_0a1b2c3d.MP4",
    "x20260102-030405_0a1b2c3d.mp4",
    "20260102-030405_0a1b2c3d.mp4\n",
]


@pytest.mark.parametrize("name", GOOD)
def test_good_names_match(name: str) -> None:
    assert OUTPUT_NAME_PATTERN.fullmatch(name)
    assert is_output_name(name)


@pytest.mark.parametrize("name", BAD)
def test_bad_names_do_not_match(name: str) -> None:
    assert not OUTPUT_NAME_PATTERN.fullmatch(name)
    assert not is_output_name(name)


def test_the_test_helper_also_checks_the_date() -> None:
    assert not is_output_name("20261399-030405_0a1b2c3d.mp4")  # month 13: the pattern alone accepts it
