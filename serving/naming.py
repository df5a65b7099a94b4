"""Output file names (defined in ``sadtalker.naming``, which the library's CLI shares) and a render's temp files.

The service passes the job store's lookup as ``is_reserved``, so a queued job's name is never handed out twice.
"""

from __future__ import annotations

from pathlib import Path

from sadtalker.naming import OUTPUT_NAME_PATTERN, allocate_output_path, output_name

__all__ = ["OUTPUT_NAME_PATTERN", "allocate_output_path", "output_name", "partial_files"]


def partial_files(output_path: Path) -> list[Path]:
    """Temporary files a render of ``output_path`` may leave if the process is killed mid-encode.

    The pipeline writes `.<stem>.<token>.partial` next to the output (so the final rename is atomic);
    the stem is unique to one job, so this never matches another job's files.
    """
    return sorted(output_path.parent.glob(f".{output_path.stem}.*partial*"))
