"""scripts/containerize picks the builder and passes the base image through, checked with stand-in commands.

The real build (several GB, ~10+ minutes) is run by hand and recorded in README "Container"; these tests pin the
script's decisions: docker when an engine answers, else buildah with chroot isolation, the
local base image handed to buildah's `--from`, and clear refusals.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "containerize"


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A bin directory whose bentoml/buildah/docker record their calls in calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Only these real tools are visible, so the machine's own docker/buildah cannot leak into the decisions.
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("bash", "env", "sed", "tail", "dirname"):
        (tools / tool).symlink_to(shutil.which(tool))
    log = tmp_path / "calls.log"
    _stub(
        bin_dir / "bentoml",
        f"""echo "bentoml $* | BUILDAH_ISOLATION=${{BUILDAH_ISOLATION:-}}" >> {log}
if [[ "$1" == build ]]; then echo "Successfully built"; echo "__tag__:sadtalker:abc123"; fi
""",
    )
    _stub(
        bin_dir / "buildah",
        f"""echo "buildah $*" >> {log}
if [[ "$1 $2 $3" == "inspect --type image" ]]; then
  [[ "$4" == localhost/base:py311 ]] || exit 125
fi
[[ "$1" == images ]] && echo "9.87 GB"
exit 0
""",
    )
    return bin_dir


def run(bin_dir: Path, *args: str, docker_engine: bool | None = None, **env: str) -> subprocess.CompletedProcess:
    if docker_engine is not None:
        _stub(
            bin_dir / "docker",
            f'echo "docker $*" >> {bin_dir.parent / "calls.log"}\n'
            f"[[ $1 == info ]] && exit {0 if docker_engine else 1}\n"
            "[[ $1 == image ]] && echo 42\nexit 0\n",
        )
    environment = {
        "PATH": f"{bin_dir}:{bin_dir.parent / 'tools'}",
        "HOME": str(bin_dir.parent),
        "BENTOML": str(bin_dir / "bentoml"),
        **env,
    }
    return subprocess.run(["bash", str(SCRIPT), *args], env=environment, capture_output=True, text=True, timeout=60)


def calls(bin_dir: Path) -> list[str]:
    log = bin_dir.parent / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_buildah_is_used_without_a_docker_engine_with_the_local_base(stubs: Path) -> None:
    result = run(stubs, "-t", "sadtalker:smoke", docker_engine=False, SADTALKER_BASE_IMAGE="localhost/base:py311")
    assert result.returncode == 0, result.stderr
    containerize = [line for line in calls(stubs) if line.startswith("bentoml containerize")]
    assert containerize == [
        "bentoml containerize sadtalker:abc123 --backend buildah --image-tag sadtalker:smoke "
        "--opt from=localhost/base:py311 | BUILDAH_ISOLATION=chroot"
    ]
    assert "built sadtalker:smoke" in result.stdout and "image size 9.87 GB" in result.stdout


def test_docker_is_preferred_when_its_engine_answers(stubs: Path) -> None:
    result = run(stubs, "--bento", "sadtalker:given", docker_engine=True)
    assert result.returncode == 0, result.stderr
    log = calls(stubs)
    assert not any(line.startswith("bentoml build") for line in log)  # --bento skips the build
    assert any(
        line.startswith("bentoml containerize sadtalker:given --backend docker --image-tag sadtalker:latest |")
        for line in log
    )
    assert "image size 42 bytes" in result.stdout


def test_buildah_isolation_from_the_environment_is_kept(stubs: Path) -> None:
    result = run(stubs, docker_engine=False, BUILDAH_ISOLATION="oci")
    assert result.returncode == 0, result.stderr
    assert any(line.endswith("| BUILDAH_ISOLATION=oci") for line in calls(stubs))


@pytest.mark.parametrize(
    ("env", "docker_engine", "message"),
    [
        ({"SADTALKER_BASE_IMAGE": "localhost/missing:1"}, False, "sudo scripts/make-base-image localhost/missing:1"),
        ({"SADTALKER_BASE_IMAGE": "localhost/base:py311"}, True, "SADTALKER_BASE_IMAGE needs buildah"),
        ({"CONTAINER_BACKEND": "podman"}, False, "CONTAINER_BACKEND must be docker or buildah"),
    ],
)
def test_refusals_name_the_fix(stubs: Path, env: dict[str, str], docker_engine: bool, message: str) -> None:
    result = run(stubs, docker_engine=docker_engine, **env)
    assert result.returncode == 1
    assert message in result.stderr
    assert not any(line.startswith("bentoml containerize") for line in calls(stubs))


def test_no_builder_at_all_is_an_error(stubs: Path) -> None:
    (stubs / "buildah").unlink()
    result = run(stubs)
    assert result.returncode == 1 and "no builder" in result.stderr


def test_unknown_argument_is_refused(stubs: Path) -> None:
    result = run(stubs, "--frobnicate")
    assert result.returncode == 1 and "unknown argument: --frobnicate" in result.stderr


def test_script_is_executable() -> None:
    assert os.access(SCRIPT, os.X_OK) and os.access(ROOT / "scripts" / "make-base-image", os.X_OK)


def test_help_describes_the_backends_and_the_base_image(stubs: Path) -> None:
    result = run(stubs, "--help")
    assert result.returncode == 0
    assert "scripts/containerize [-t IMAGE:TAG]" in result.stdout and "SADTALKER_BASE_IMAGE" in result.stdout
    assert calls(stubs) == []  # --help builds nothing
