"""Whole-pipeline benchmark: seconds per stage, total, frames/s and peak RSS for one generation.

    python bench/pipeline.py --checkpoints /work/synth --seconds 5 --preset crop [--enhancer none]
        [--max-frames N] [--stub-render] [--image IMG --landmarks LM.npy]

Defaults to the reference kit's people_0.png with its injected landmarks (random weights detect no real face)
and a synthetic speech-like signal of --seconds.  --stub-render replaces the generator with a copy of the
source crop, so long clips can show whether compose + encode memory stays flat (the renders of random weights
cost ~7 s a frame on a CPU).  Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from sadtalker.options import GenerateOptions  # noqa: E402
from sadtalker.pipeline import SadTalker  # noqa: E402
from sadtalker.video import probe_video  # noqa: E402

GOLDEN = REPO.parent / "shared" / "reference" / "golden" / "crop_people0_256"


def speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    """Deterministic voiced-sounding audio: a few harmonics with a syllable-rate envelope, plus noise."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    noise = np.random.default_rng(0).normal(0, 0.02, t.shape)
    return (0.2 * voiced * envelope + noise).astype(np.float32)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stub_generator(talker: SadTalker) -> None:
    """Make every frame a copy of the source crop (the warp/generator cost removed, everything else real)."""
    for size_models in talker.models.values():
        for renderer in size_models.renderers.values():
            renderer.render_frames = lambda source, driving, *_precision: source.image.expand(
                len(driving.kp_driving), -1, -1, -1
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--preset", choices=["crop", "full"], default="crop")
    parser.add_argument("--enhancer", choices=["gfpgan", "none"], default=None, help="override the preset's")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the device's (1 on CPU)")
    parser.add_argument("--stub-render", action="store_true")
    parser.add_argument("--precision", choices=["exact", "fast"], default="exact")
    parser.add_argument("--compile", action="store_true", help="compile the per-frame networks at load")
    parser.add_argument("--image", type=Path, default=GOLDEN / "people_0.png")
    parser.add_argument("--landmarks", type=Path, default=None, help=".npy (68, 2); default: the golden case's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    if args.landmarks is not None:
        landmarks = np.load(args.landmarks)
    else:
        with np.load(GOLDEN / "inputs.npz") as inputs:
            landmarks = inputs["lm68_orig"]
    overrides = {"batch_size": args.batch_size, "max_frames": args.max_frames, "seed": 0, "precision": args.precision}
    if args.enhancer:
        overrides["enhancer"] = args.enhancer
    options = GenerateOptions.preset(args.preset, **overrides)

    started = time.perf_counter()
    talker = SadTalker(
        args.checkpoints,
        args.device,
        enhancer=options.enhancer == "gfpgan",
        enhancer_max_faces=1,
        precision=args.precision,
        compile=args.compile,
    )
    load_s = time.perf_counter() - started
    if args.stub_render:
        stub_generator(talker)
    rss_after_load = peak_rss_mib()

    marks: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as work:
        audio = Path(work) / "speech.wav"
        soundfile.write(audio, speech_like(args.seconds), 16000)
        output = Path(work) / "clip.mp4"
        begin = time.perf_counter()
        talker.generate(
            args.image,
            audio,
            output,
            options=options,
            landmarks=landmarks,
            progress=lambda report: marks.append((report.stage, time.perf_counter())),
        )
        total = time.perf_counter() - begin
        frames = probe_video(output)["frames"]

    stage_seconds: dict[str, float] = {}
    edges = [*marks, ("end", begin + total)]
    for (stage, at), (_, next_at) in zip(edges, edges[1:], strict=False):
        stage_seconds[stage] = stage_seconds.get(stage, 0.0) + (next_at - at)
    print(
        f"device {args.device}, preset {args.preset}, enhancer {options.enhancer}, audio {args.seconds:.1f} s, "
        f"frames {frames}{' (stub render)' if args.stub_render else ''}, torch threads {torch.get_num_threads()}"
    )
    print(f"model load             {load_s:8.2f} s")
    for stage, seconds in stage_seconds.items():
        print(f"{stage:22s} {seconds:8.2f} s")
    print(f"total                  {total:8.2f} s   ({frames / total:.3f} frames/s)")
    print(f"peak RSS after load    {rss_after_load:8.0f} MiB")
    print(f"peak RSS overall       {peak_rss_mib():8.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
