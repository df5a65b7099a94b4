"""Shared fixtures: the reference kit in ../shared and synthetic checkpoints built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sadtalker  # noqa: F401  (installs the compat aliases before any gfpgan/facexlib import)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SADTALKER_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
TOOLS = SHARED / "tools"
GOLDEN_CASES = ("crop_people0_256", "fullstill_full3_256")
SKIP_NO_SHARED = (
    f"reference kit not found at {SHARED} (set SADTALKER_SHARED, or run where ../shared exists, as CI does)"
)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(SKIP_NO_SHARED)
    return REFERENCE


@pytest.fixture(scope="session", params=GOLDEN_CASES)
def golden_case_dir(request: pytest.FixtureRequest, reference_dir: Path) -> Path:
    """A public golden case folder (image, wav, case.json, inputs.npz, golden.npz)."""
    return reference_dir / "golden" / request.param


def load_golden(case_dir: Path) -> dict[str, np.ndarray]:
    with np.load(case_dir / "golden.npz") as data:
        return {key: data[key] for key in data.files}


def _run_tool(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(TOOLS / script), *args], check=True, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def synthetic_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory with synthetic files in the official formats (256 and 512, both mappings, enhancers).

    Built once per session (~1 min, ~2.2 GB). Set SADTALKER_TEST_CHECKPOINTS to a directory that already
    holds them to skip the build while developing.
    """
    prebuilt = os.environ.get("SADTALKER_TEST_CHECKPOINTS")
    if prebuilt:
        return Path(prebuilt)
    if not TOOLS.is_dir():
        pytest.skip(SKIP_NO_SHARED)
    out = tmp_path_factory.mktemp("checkpoints")
    _run_tool("make_synthetic_checkpoints.py", "--out", str(out), "--size", "both")
    _run_tool("make_synthetic_enhancer_weights.py", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    """A real PostgreSQL server for this session (see tests/postgres_server.py); stopped at the end.

    Skips with the reason where PostgreSQL is missing; with CI=true that is a failure instead.
    """
    from tests.postgres_server import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL test server cannot start: {exc}")
        pytest.skip(f"PostgreSQL test server cannot start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database()
