"""Render-stage throughput (frames/s) on the checkpoint files in --checkpoints (synthetic weights are fine).

Renders --frames frames in batches of --batch-size at 256 px, and at 512 px when SadTalker_V0.0.2_512.safetensors is
present.  Prints figures, asserts nothing.  Inputs are seeded random coefficients and a seeded random image: the
cost of the networks does not depend on the content.

    python bench/render.py --checkpoints /work/synth --frames 4 --batch-size 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sadtalker.render import Renderer, build_semantics  # noqa: E402
from sadtalker.weights import read_safetensors  # noqa: E402

MAPPING_70 = "mapping_00229-model.pth.tar"


def bench_size(checkpoints: Path, size: int, frames: int, batch_size: int, device: str) -> None:
    path = checkpoints / f"SadTalker_V0.0.2_{size}.safetensors"
    if not path.is_file():
        print(f"[{size}] skipped: {path} not found")
        return
    t0 = time.perf_counter()
    state = read_safetensors(path)
    renderer = Renderer.from_checkpoint(
        state, checkpoints / MAPPING_70, coeff_nc=70, device=device, source_name=path.name
    )
    del state
    load_s = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=gen)
    semantics = build_semantics(
        0.1 * torch.randn(frames, 70, generator=gen), 0.1 * torch.randn(1, 73, generator=gen), full=False, still=False
    )

    t0 = time.perf_counter()
    renderer.prepare_source(image, semantics.source)
    source_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    done = 0
    for batch in renderer.render(image, semantics.source, semantics.target, batch_size=batch_size):
        done += batch.shape[0]
    total_s = time.perf_counter() - t0
    frame_s = max(total_s - source_s, 1e-9)  # render() prepares the source once more itself
    print(
        f"[{size}] load {load_s:.1f} s | source (kp + encoder) {source_s:.2f} s | {done} frames, batch {batch_size}: "
        f"{total_s:.1f} s total -> {done / frame_s:.3f} frames/s ({frame_s / done:.2f} s/frame) excluding source"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoints", type=Path, default=Path(os.environ.get("SADTALKER_CHECKPOINTS", "checkpoints"))
    )
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for size in args.sizes:
        bench_size(args.checkpoints, size, args.frames, args.batch_size, args.device)


if __name__ == "__main__":
    main()
