"""Aliases for APIs that basicsr 1.4.2 and facexlib 0.3.0 still use but their dependencies removed.

Import this module before importing gfpgan, basicsr or facexlib (``sadtalker/__init__.py`` does). It imports
neither torch nor torchvision itself: the torchvision alias is resolved only when something imports the old name,
so ``import sadtalker.contracts`` (the service's configuration) stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

import numpy as np

# basicsr.data.degradations imports torchvision.transforms.functional_tensor, renamed to _functional_tensor in
# torchvision 0.17.
_RENAMED_MODULES = {"torchvision.transforms.functional_tensor": "torchvision.transforms._functional_tensor"}


class _RenamedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: serves an old module name (only when no real module has it) from its new home."""

    def find_spec(
        self, fullname: str, path: object = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _RENAMED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # a fresh module; exec_module fills it

    def exec_module(self, module: types.ModuleType) -> None:
        target = importlib.import_module(_RENAMED_MODULES[module.__name__])
        module.__dict__.update({key: value for key, value in vars(target).items() if not key.startswith("__")})


def install() -> None:
    """Install the aliases; idempotent."""
    if not any(isinstance(finder, _RenamedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_RenamedModuleFinder())
    # facexlib.alignment (AWing) calls np.float, removed in numpy 1.24.
    if "float" not in np.__dict__:
        np.float = float  # type: ignore[attr-defined]


install()
