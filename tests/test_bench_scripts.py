"""The benchmark scripts still import: a renamed module or function must fail here, not silently in bench/.

Cheap (no model is loaded): each script is imported as a module (its top-level imports run) and every import
statement anywhere in it, including the ones inside functions, is resolved against the project's packages.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))
OUR_PACKAGES = ("sadtalker", "serving", "service")


def test_there_are_bench_scripts() -> None:
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_imports_resolve(script: Path) -> None:
    """Every ``import``/``from ... import`` of our packages in the script (at any depth) names something that
    exists, and the script's module-level code runs (what ``--help`` needs)."""
    tree = ast.parse(script.read_text(), filename=str(script))
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in OUR_PACKAGES:
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name == "*":
                    continue
                has = hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}")
                assert has, f"{script.name}:{node.lineno}: {node.module} has no {alias.name}"
            checked += 1
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in OUR_PACKAGES:
                    importlib.import_module(alias.name)
                    checked += 1
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script's body runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)  # top-level code only: every script runs main() under __name__ == "__main__"
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
    assert checked or "sadtalker" not in script.read_text(), f"{script.name}: no import of ours was checked"


def test_speed_bench_help_runs() -> None:
    """The issue-10 benchmark's command line parses (one subprocess: the others are covered by the import check)."""
    result = subprocess.run(
        [sys.executable, str(BENCH / "speed.py"), "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "--compile-precisions" in result.stdout
