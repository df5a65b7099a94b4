"""Aliases for APIs that basicsr 1.4.2 and facexlib 0.3.0 still use but their dependencies removed.

Import this module before importing gfpgan, basicsr or facexlib (``sadtalker/__init__.py`` does).
"""

from __future__ import annotations

import importlib
import sys

import numpy as np


def install() -> None:
    """Install the aliases; idempotent."""
    # basicsr.data.degradations imports torchvision.transforms.functional_tensor,
    # renamed to _functional_tensor in torchvision 0.17.
    name = "torchvision.transforms.functional_tensor"
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = importlib.import_module("torchvision.transforms._functional_tensor")
    # facexlib.alignment (AWing) calls np.float, removed in numpy 1.24.
    if "float" not in np.__dict__:
        np.float = float  # type: ignore[attr-defined]


install()
