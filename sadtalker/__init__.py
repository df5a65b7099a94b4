"""SadTalker inference: one portrait + one speech recording -> talking-head video."""

from sadtalker import compat as _compat  # noqa: F401  (must run before gfpgan/basicsr/facexlib imports)
