"""Fixtures only (helpers live in tests/helpers.py): the reference kit, synthetic checkpoints, shared models.

Expensive objects are session-scoped and shared by every test module: the synthetic checkpoints, one 256-px
``SadTalker`` (every network, GFPGAN, face detection), one 512-px one, and the conformance runner's arrays per
golden case.  Tests must not mutate them (swap attributes on a ``copy.copy`` instead).

Without the reference kit (``../shared``) the tests that need it skip, except under ``CI=true``: there the run
stops at once with one line, so a CI job can never pass with its golden comparisons silently skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import GOLDEN_CASES, REFERENCE, TOOLS, missing_kit_message, on_ci

import sadtalker  # noqa: F401  (installs the compat aliases before any gfpgan/facexlib import)


def pytest_configure(config: pytest.Config) -> None:
    if on_ci() and not REFERENCE.is_dir():
        raise pytest.UsageError(f"CI=true but the {missing_kit_message()}")


# pytest-xdist (`make test TEST_WORKERS=2` runs `-n 2`): a worker runs whole modules, so each module's fixtures
# (a `bentoml serve`, rendered videos) are built once, and modules that share a session fixture that is costly to
# build run on the same worker: the golden cases' conformance renders (conformance_arrays) and the 512-px pipeline
# are then built once per run, not once per worker.  Done with our own scheduler: xdist's `--dist loadgroup`
# rewrites node ids, which pytest 9 ignores (node ids are computed), so its groups silently fall apart.
SAME_WORKER_AS = {"test_speed": "test_conformance", "test_models": "test_render_512"}


def module_group(nodeid: str) -> str:
    """The scheduling unit of a test: its module, or the module it must share a worker with."""
    module = nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")
    return SAME_WORKER_AS.get(module, module)


# The longest modules (renders, model loads) first, so the two workers do not end waiting on one of them.
LONGEST_FIRST = ("test_pipeline", "test_render_512", "test_conformance", "test_motion_controls")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' collection order is what the scheduler hands out
        # By group, not module: a stable sort keeps pytest's order within a group, which runs the tests of one
        # parametrised session fixture (a golden case's renders) together across its modules.
        rank = {module: index for index, module in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(module_group(item.nodeid), len(rank)))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return module_group(nodeid)

    config.option.loadscopereorder = False  # hand modules out in collection order (longest first), not by size
    return ModuleGroupScheduling(config, log)


def _share_cores_between_workers() -> None:
    """Each xdist worker gets its share of the cores for torch (2 workers x 2 threads on 2 cores thrash)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


_share_cores_between_workers()


def _missing_kit() -> None:
    if on_ci():
        pytest.fail(f"CI=true but the {missing_kit_message()}", pytrace=False)
    pytest.skip(missing_kit_message())


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        _missing_kit()
    return REFERENCE


@pytest.fixture(scope="session", params=GOLDEN_CASES)
def golden_case_dir(request: pytest.FixtureRequest, reference_dir: Path) -> Path:
    """A public golden case folder (image, wav, case.json, inputs.npz, golden.npz)."""
    return reference_dir / "golden" / request.param


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
        _missing_kit()
    out = tmp_path_factory.mktemp("checkpoints")
    _run_tool("make_synthetic_checkpoints.py", "--out", str(out), "--size", "both")
    _run_tool("make_synthetic_enhancer_weights.py", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def checkpoint_256(synthetic_checkpoints: Path) -> dict[str, torch.Tensor]:
    """The synthetic 256 safetensors as a flat dict (for loader tests that edit or inspect raw tensors)."""
    from sadtalker.weights import read_safetensors

    return read_safetensors(synthetic_checkpoints / "SadTalker_V0.0.2_256.safetensors")


@pytest.fixture(scope="session")
def talker(synthetic_checkpoints: Path):
    """THE 256-px pipeline of the session: every network, face detection and GFPGAN, loaded once (~25 s).

    One face per frame for GFPGAN: random RetinaFace weights "see" hundreds of faces in any picture.
    """
    from sadtalker.pipeline import SadTalker

    return SadTalker(synthetic_checkpoints, "cpu", sizes=(256,), enhancer=True, enhancer_max_faces=1)


@pytest.fixture(scope="session")
def talker_512(synthetic_checkpoints: Path):
    """A 512-px pipeline without face detection and GFPGAN (only the 512 render path needs it)."""
    from sadtalker.pipeline import SadTalker

    return SadTalker(synthetic_checkpoints, "cpu", sizes=(512,), enhancer=False, face_detection=False)


@pytest.fixture(scope="session")
def conformance_arrays(golden_case_dir: Path, talker) -> dict[str, np.ndarray]:
    """Our arrays for a golden case under the kit's names (renders the 3 golden frames once per session)."""
    from sadtalker.conformance import Case, run_case

    return run_case(Case.read(golden_case_dir), talker)


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
