"""Output file names: `<YYYYmmdd-HHMMSS>_<8 hex>.mp4`, unique within the output directory.

The timestamp makes a directory listing sort by submission time; 32 random bits make two names in the
same second collide with probability ~1e-10, and the check against the disk and the job store (which
holds a UNIQUE constraint on the path) turns "very unlikely" into "never". We do not create a
placeholder file: a visible empty/partial .mp4 in the output directory is exactly what clients must
never see; the job store reserves the name instead.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

OUTPUT_NAME_PATTERN = re.compile(r"^\d{8}-\d{6}_[0-9a-f]{8}\.mp4$")
_MAX_TRIES = 100


def output_name(now: datetime, token: str) -> str:
    """The file name for a video submitted at ``now`` (local time) with an 8-hex-digit ``token``."""
    if not re.fullmatch(r"[0-9a-f]{8}", token):
        raise ValueError(f"token must be 8 lowercase hex digits, got {token!r}")
    return f"{now:%Y%m%d-%H%M%S}_{token}.mp4"


def allocate_output_path(
    output_dir: Path,
    *,
    is_reserved: Callable[[Path], bool] = lambda _path: False,
    now: Callable[[], datetime] = datetime.now,
    token: Callable[[], str] = lambda: secrets.token_hex(4),
) -> Path:
    """A path in ``output_dir`` that exists neither on disk nor among reserved (queued/running) jobs.

    ``is_reserved`` is the job store's lookup; ``now`` and ``token`` are injectable for tests.
    """
    for _ in range(_MAX_TRIES):
        candidate = output_dir / output_name(now(), token())
        if not candidate.exists() and not is_reserved(candidate):
            return candidate
    raise RuntimeError(f"could not find a free output name in {output_dir} after {_MAX_TRIES} tries")


def partial_files(output_path: Path) -> list[Path]:
    """Temporary files a render of ``output_path`` may leave if the process is killed mid-encode.

    The pipeline writes `.<stem>.<token>.partial` next to the output (so the final rename is atomic);
    the stem is unique to one job, so this never matches another job's files.
    """
    return sorted(output_path.parent.glob(f".{output_path.stem}.*partial*"))
