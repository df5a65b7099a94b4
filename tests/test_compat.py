"""The pinned gfpgan/basicsr/facexlib import cleanly once our compat aliases are installed."""

import importlib
import subprocess
import sys

import numpy as np

MODULES = ["gfpgan", "basicsr.archs.rrdbnet_arch", "facexlib.detection", "facexlib.alignment", "facexlib.parsing"]


def test_third_party_imports_after_compat() -> None:
    # A fresh interpreter, so an alias installed by another test cannot hide a missing one.
    code = f"import sadtalker, {', '.join(MODULES)}; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_aliases_point_at_live_objects() -> None:
    from sadtalker import compat

    compat.install()
    compat.install()  # idempotent
    functional_tensor = importlib.import_module("torchvision.transforms.functional_tensor")
    assert hasattr(functional_tensor, "rgb_to_grayscale")
    assert np.float is float  # type: ignore[attr-defined]
