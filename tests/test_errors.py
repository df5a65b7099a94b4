"""Every error class names its own failure kind (what the service reports), documented in sadtalker.errors."""

from __future__ import annotations

import re

import sadtalker.checkpoints.download  # noqa: F401  (every module that could define an error class)
import sadtalker.weights  # noqa: F401
from sadtalker import errors
from sadtalker.errors import SadTalkerError


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def test_each_error_class_has_its_own_distinct_documented_kind() -> None:
    # The library's own classes (the service subclasses some to add context, keeping their parent's kind).
    classes = [c for c in [SadTalkerError, *_all_subclasses(SadTalkerError)] if c.__module__.startswith("sadtalker")]
    assert len(classes) >= 12
    kinds = {}
    for cls in classes:
        assert "kind" in vars(cls), f"{cls.__name__} inherits its parent's kind"
        assert re.fullmatch(r"[a-z_]+", cls.kind), cls.kind
        kinds.setdefault(cls.kind, []).append(cls.__name__)
        # The module docstring's table has one row per class: ``kind``  ClassName  meaning.
        assert re.search(rf"^``{cls.kind}``\s+{cls.__name__}\s+\S", errors.__doc__ or "", re.MULTILINE), cls.__name__
    assert all(len(names) == 1 for names in kinds.values()), kinds
    assert SadTalkerError.kind == "internal"


def test_kinds_the_service_already_reports_are_kept() -> None:
    # Labels of sadtalker_jobs_failed_total{kind} in deployed dashboards.
    classes = [errors.NoFaceError, errors.ImageError, errors.AudioError, errors.InputError, errors.RenderError]
    assert [cls.kind for cls in [*classes, errors.CheckpointError]] == [
        "no_face",
        "image",
        "audio",
        "input",
        "render",
        "checkpoint",
    ]
