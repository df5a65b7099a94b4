"""The checkpoint files' names and where each one lives: the paths object every loader takes.

Standard library only: loaders import this to find their files without pulling in the manifest, verification or
download code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sadtalker.contracts import FULL_COEFFS

ENV_DIR = "SADTALKER_CHECKPOINTS"
DEFAULT_DIR = "checkpoints"
SIZES: tuple[str, ...] = ("256", "512")

# File names, as published and as the pipeline expects them in the checkpoint directory.
SADTALKER_FILE = "SadTalker_V0.0.2_{size}.safetensors"
MAPPING_CROP_FILE = "mapping_00229-model.pth.tar"  # coeff_nc 70: preprocess crop / extcrop / resize
MAPPING_FULL_FILE = "mapping_00109-model.pth.tar"  # coeff_nc 73: preprocess full / extfull
FACE_ALIGNMENT_FILE = "alignment_WFLW_4HG.pth"
FACE_DETECTION_FILE = "detection_Resnet50_Final.pth"
FACE_PARSING_FILE = "parsing_parsenet.pth"
GFPGAN_FILE = "GFPGANv1.4.pth"


def normalize_sizes(sizes: Iterable[str | int] | str | int) -> tuple[str, ...]:
    """``"all"`` / ``256`` / ``["256", "512"]`` -> ``("256", ...)``; raises ValueError on an unknown size."""
    if isinstance(sizes, str | int):
        sizes = [sizes]
    out: list[str] = []
    for size in sizes:
        names = SIZES if str(size) == "all" else (str(size),)
        for name in names:
            if name not in SIZES:
                raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)} or 'all'")
            if name not in out:
                out.append(name)
    return tuple(out)


@dataclass(frozen=True)
class CheckpointPaths:
    """Where each file the pipeline loads lives (all flat in one directory)."""

    directory: Path
    size: str
    sadtalker: Path  # kp_extractor, generator, audio2exp, audio2pose, face_3drecon
    mapping_crop: Path  # mapping net for preprocess crop / extcrop / resize
    mapping_full: Path  # mapping net for preprocess full / extfull
    face_alignment: Path  # facexlib AWing FAN (98 landmarks)
    face_detection: Path  # facexlib RetinaFace resnet50 (also used by GFPGAN's face helper)
    face_parsing: Path  # facexlib ParseNet (GFPGAN paste-back mask)
    gfpgan: Path  # GFPGAN v1.4 (enhancer)

    def mapping_for(self, coeff_nc: int) -> Path:
        """The mapping net taking ``coeff_nc`` coefficients per frame (``sadtalker.contracts.coeff_count``)."""
        return self.mapping_full if coeff_nc == FULL_COEFFS else self.mapping_crop


def checkpoint_paths(directory: str | Path | CheckpointPaths, size: str | int = "256") -> CheckpointPaths:
    """Paths only; ``verify.require_checkpoints`` checks the files are there and right.

    A ``CheckpointPaths`` is returned as is when it already has ``size`` (loaders accept either form).
    """
    (size,) = normalize_sizes(size)
    if isinstance(directory, CheckpointPaths):
        if directory.size == size:
            return directory
        directory = directory.directory
    root = Path(directory).expanduser()
    return CheckpointPaths(
        directory=root,
        size=size,
        sadtalker=root / SADTALKER_FILE.format(size=size),
        mapping_crop=root / MAPPING_CROP_FILE,
        mapping_full=root / MAPPING_FULL_FILE,
        face_alignment=root / FACE_ALIGNMENT_FILE,
        face_detection=root / FACE_DETECTION_FILE,
        face_parsing=root / FACE_PARSING_FILE,
        gfpgan=root / GFPGAN_FILE,
    )
