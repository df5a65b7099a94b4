"""`bentoml build` from the project: the Bento holds the service and its code, never tests, outputs or weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_service_http import Dirs, launch, post, server_env, wait_ready, wait_state

REPO = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).with_name("bentoml")
DECOYS = {
    "checkpoints/SadTalker_V0.0.2_256.safetensors": b"weights",
    "checkpoints/GFPGANv1.4.pth": b"weights",
    "output/20260101-000000_deadbeef.mp4": b"video",
    "state/jobs.sqlite3": b"db",
    "inputs/face.png": b"input",
}


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build from a copy of the tracked files plus decoy weights/outputs, into a throwaway BENTOML_HOME."""
    root = tmp_path_factory.mktemp("bento")
    project = root / "project"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (REPO / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    for name, content in DECOYS.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(content)
    env = {**os.environ, "BENTOML_HOME": str(root / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    result = subprocess.run(
        [str(BENTOML), "build", str(project), "--output", "tag"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return root / "home" / "bentos" / name / version


def test_bento_holds_the_service_and_its_code(bento: Path) -> None:
    src = bento / "src"
    for name in (
        "service.py",
        "sadtalker/pipeline.py",
        "sadtalker/checkpoints/checkpoint_manifest.json",
        "serving/jobs.py",
        "sadtalker/render/generator.py",
        "checkpoints/README.md",
        "serving/web/index.html",
        "serving/web/app.js",
        "serving/web/style.css",
    ):
        assert (src / name).is_file(), name
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "service:SadTalkerService"
    assert meta["name"] == "sadtalker"


def test_bento_excludes_tests_outputs_and_weights(bento: Path) -> None:
    files = [p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*") if p.is_file()]
    assert not [f for f in files if f.startswith(("tests/", "bench/", "output/", "state/", "inputs/", ".venv/"))]
    assert not [f for f in files if f.endswith((".safetensors", ".pth", ".pth.tar", ".mp4", ".sqlite3", ".pyc"))]
    # Test scaffolding stays out of the image: the fake pipeline lives in tests/fakes.py only.
    assert not [f for f in files if "fake" in f.rsplit("/", 1)[-1]], files
    assert not any("FakePipeline" in (bento / "src" / f).read_text() for f in files if f.endswith(".py"))


def test_bento_requirements_are_the_lock(bento: Path) -> None:
    def pins(text: str) -> set[str]:
        return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}

    lock = pins((REPO / "requirements.lock").read_text())
    assert pins((bento / "env" / "python" / "requirements.txt").read_text()) == lock
    assert {"torch==2.14.1", "bentoml==1.4.39", "gfpgan==1.3.8", "facexlib==0.3.0"} <= lock
    assert not [pin for pin in lock if "opencv-python-headless" in pin]


def test_dockerfile_has_system_packages_user_entrypoint_and_data_dirs(bento: Path) -> None:
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "libgl1" in dockerfile and "libglib2.0-0" in dockerfile
    assert "ARG BENTO_USER_UID=1034" in dockerfile
    lines = [line for line in dockerfile.splitlines() if line.strip()]
    assert lines[-1].startswith("ENTRYPOINT") and lines[-2] == "USER bentoml"  # runs as the non-root user
    for name, value in (
        ("SADTALKER_CHECKPOINTS", "/data/checkpoints"),
        ("SADTALKER_OUTPUT_DIR", "/data/output"),
        ("SADTALKER_STATE_DIR", "/data/state"),
        ("SADTALKER_INPUT_DIRS", "/data/inputs"),
    ):
        assert f"ARG {name}={value}" in dockerfile
    assert "SADTALKER_ALLOW_CPU" not in dockerfile
    # uv's download cache would otherwise stay in the image layer (measured: 12.9 GB image with it).
    assert dockerfile.index("ENV UV_NO_CACHE=$UV_NO_CACHE") < dockerfile.index("uv --directory")
    assert "ARG BENTOML_DO_NOT_TRACK=True" in dockerfile
    assert "ARG NUMBA_CACHE_DIR=/data/state/cache/numba" in dockerfile  # writable by uid 1034, survives restarts
    setup = [p for p in (bento / "env" / "docker").iterdir() if p.name.startswith("script__")]
    assert len(setup) == 1 and "install -d -o 1034 -g 1034" in setup[0].read_text()


# The image runs `bentoml serve $BENTO_PATH` from the Bento's directory.  BentoML takes the Bento's src/ off
# sys.path again once the service module is imported, so anything imported lazily afterwards must resolve through
# an already-imported package.  Serving the built Bento from elsewhere catches what serving the project cannot.


def test_built_bento_fails_fast_without_checkpoints(bento: Path, tmp_path: Path) -> None:
    dirs = Dirs.make(tmp_path)
    (tmp_path / "no-weights").mkdir()
    env = server_env(dirs, SADTALKER_PIPELINE_FACTORY="", SADTALKER_CHECKPOINTS=str(tmp_path / "no-weights"))
    server = launch(dirs, env, "bento-no-weights", target=str(bento), cwd=tmp_path)
    try:
        code = server.process.wait(timeout=180)
    finally:
        server.stop()
    output = server.output()
    assert code == 1, output
    assert "SadTalker cannot start" in output and "no-weights" in output, output
    assert "Traceback" not in output, output


def test_built_bento_serves_a_job(bento: Path, tmp_path: Path) -> None:
    dirs = Dirs.make(tmp_path)
    # The fake pipeline is not in the Bento: put ONLY tests/fakes.py on the path (not the project's packages,
    # which must come from the Bento).
    (tmp_path / "fakes_path" / "tests").mkdir(parents=True)
    shutil.copy2(REPO / "tests" / "fakes.py", tmp_path / "fakes_path" / "tests" / "fakes.py")
    env = server_env(dirs, PYTHONPATH=str(tmp_path / "fakes_path"))
    server = launch(dirs, env, "bento-fake", target=str(bento), cwd=tmp_path)
    try:
        wait_ready(server)
        response = post(
            server,
            "/generate",
            {
                "driven_audio": str(dirs.inputs / "speech.wav"),
                "source_image": str(dirs.inputs / "face.png"),
                "option": "crop",
                "request_id": "from-the-bento",
            },
        )
        assert (response.status_code, response.text) == (200, "1"), response.text
        status = wait_state(server, "from-the-bento", {"completed", "failed"})
        assert status["state"] == "completed", status
        assert Path(status["output_path"]).parent == dirs.output and Path(status["output_path"]).is_file()
    finally:
        assert server.stop() == 0, server.output()
