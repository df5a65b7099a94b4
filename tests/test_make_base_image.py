"""scripts/make-base-image takes its Debian mirror from the building host's apt sources (or DEBIAN_MIRROR)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make-base-image"
# Stand-ins for a host's mirrors (reserved .test names: never resolved, only copied into the image's sources).
MAIN = "http://mirror.example.test/debian"
SECURITY = "http://security.example.test/debian-security"


def _mirrors(apt_etc: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEBIAN_")}
    environ.update(APT_ETC=str(apt_etc), **env)
    return subprocess.run(
        [str(SCRIPT), "--print-mirrors"], capture_output=True, text=True, env=environ, timeout=30, check=False
    )


def test_mirrors_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src-only.example.test/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://disabled.example.test/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        f"Types: deb\n# a comment line\nURIs: {MAIN}/\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {SECURITY}\nSuites: bookworm-security\nComponents: main\n"
    )
    result = _mirrors(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"mirror {MAIN}", f"security {SECURITY}"]


def test_mirrors_from_one_line_sources_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example.test/debian bookworm main\n"
        f"deb [arch=amd64 signed-by=/k.gpg] {SECURITY} bookworm-security main\n"
        f"deb {MAIN} bookworm main contrib\n"
    )
    assert _mirrors(tmp_path).stdout.splitlines() == [f"mirror {MAIN}", f"security {SECURITY}"]
    other = "http://other.example.test/debian"
    overridden = _mirrors(tmp_path, DEBIAN_MIRROR=other, DEBIAN_SECURITY_MIRROR=other + "-security")
    assert overridden.stdout.splitlines() == [f"mirror {other}", f"security {other}-security"]


def test_no_host_sources_requires_the_variable(tmp_path: Path) -> None:
    result = _mirrors(tmp_path)
    assert result.returncode == 1 and "DEBIAN_MIRROR" in result.stderr
    assert _mirrors(tmp_path, DEBIAN_MIRROR=MAIN).stdout.splitlines() == [f"mirror {MAIN}", "security none"]
