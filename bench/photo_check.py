"""Photo check latency (what `/check_photo` costs per request) for a 1024x1024 portrait on this CPU.

Loads RetinaFace from --checkpoints (synthetic weights are fine: the network's cost does not depend on them,
though random weights report many faces, which adds a little box post-processing), then times the whole check
(decode from disk, shrink, detect, verdict) with the detector input shrunk to the service's DETECT_MAX_SIDE and,
alternating in the same process, to 320/480/640 px and the photo's full 1024 px for comparison. Prints min and
median wall and CPU time; asserts nothing.

    python bench/photo_check.py --checkpoints /work/ckpt [--image portrait.png] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import sadtalker  # noqa: E402,F401  (compat aliases before facexlib)
from serving.photo_check import DETECT_MAX_SIDE, PhotoChecker  # noqa: E402

DEFAULT_IMAGE = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "golden" / "crop_people0_256" / "people_0.png"
)


def portrait_1024(source: Path | None, out: Path) -> Path:
    if source is not None and source.is_file():
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        image = cv2.resize(image, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    else:  # no portrait at hand: a seeded noise image costs the detector the same
        image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    cv2.imwrite(str(out), image)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_checkpoints = Path(os.environ.get("SADTALKER_CHECKPOINTS", "checkpoints"))
    parser.add_argument("--checkpoints", type=Path, default=default_checkpoints)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    import torch

    print(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as scratch:
        photo = portrait_1024(args.image, Path(scratch) / "portrait.png")
        variants = {f"shrink to {DETECT_MAX_SIDE} (service)": PhotoChecker(args.checkpoints, max_side=DETECT_MAX_SIDE)}
        for side in (320, 480, 640, 1024):
            if side != DETECT_MAX_SIDE:
                variants[f"shrink to {side}"] = PhotoChecker(args.checkpoints, max_side=side)
        started = time.perf_counter()
        first = next(iter(variants.values()))
        first.check(photo)  # loads the detector (and warms up)
        print(f"detector load + first check: {time.perf_counter() - started:.2f} s")
        # Share one loaded network: the variants differ only in the input size.
        for checker in variants.values():
            checker._detect = first._detect  # noqa: SLF001 (benchmark only)
        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        verdicts = {}
        for _ in range(args.runs):
            for name, checker in variants.items():  # alternating, same process
                t0, c0 = time.perf_counter(), time.process_time()
                verdicts[name] = checker.check(photo)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    # Wall time depends on what else runs; CPU seconds (all threads) / cores is the wall time on an idle machine.
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, values in times.items():
        verdict = verdicts[name]
        print(
            f"{name:>26}: wall min {min(values):.3f} s, median {statistics.median(values):.3f} s; "
            f"CPU min {min(cpu[name]):.3f} s, median {statistics.median(cpu[name]):.3f} s "
            f"over {len(values)} runs (faces {len(verdict.faces)}, usable {verdict.usable})"
        )


if __name__ == "__main__":
    main()
