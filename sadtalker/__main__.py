"""Command line, with the original ``inference.py`` flags:

    python -m sadtalker --source_image face.png --driven_audio speech.wav --result_dir results \
        [--preprocess crop|full|resize|extcrop|extfull] [--still] [--enhancer gfpgan|none] [--size 256|512]
        [--pose_style N] [--expression_scale X] [--batch_size N] [--seed N] [--landmarks FILE] [--cpu]
        [--ref_eyeblink VIDEO] [--ref_pose VIDEO] [--input_yaw DEG [DEG ...]] [--input_pitch ...] [--input_roll ...]
        [--precision exact|fast] [--no_compile]

The video is written to ``<result_dir>/<YYYYmmdd-HHMMSS>_<8 hex>.mp4`` and its path printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from sadtalker.contracts import PREPROCESS_MODES, ProgressReport, check_landmarks
from sadtalker.errors import SadTalkerError
from sadtalker.options import GenerateOptions


def read_landmarks(path: str | Path) -> np.ndarray:
    """68 [x, y] points in original-image pixels from ``.npy``, ``.json`` (list of pairs) or text (x y per line)."""
    path = Path(path)
    if path.suffix == ".npy":
        points = np.load(path)
    elif path.suffix == ".json":
        points = np.asarray(json.loads(path.read_text()), dtype=np.float32)
    else:
        points = np.loadtxt(path, dtype=np.float32, delimiter=None, ndmin=2)
    return check_landmarks(points, f"{path}: landmarks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sadtalker", description="Portrait + speech -> talking-head mp4")
    parser.add_argument("--source_image", required=True, help="portrait image (jpg/png/webp/bmp)")
    parser.add_argument("--driven_audio", required=True, help="speech audio (wav/mp3/flac/ogg/m4a)")
    parser.add_argument("--result_dir", default="results", help="directory for the mp4 (default: results)")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="checkpoint directory (default: checkpoints)")
    parser.add_argument(
        "--preset",
        choices=["crop", "full"],
        default=None,
        help="the service's presets (crop: --preprocess crop; full: --preprocess full --still); "
        "explicit flags below override it",
    )
    parser.add_argument(
        "--preprocess",
        choices=list(PREPROCESS_MODES),
        default=None,
        help="extcrop/extfull: the larger border crop (extfull pastes it back into the photo)",
    )
    parser.add_argument("--still", action="store_true", default=None, help="keep the head pose of the photo")
    parser.add_argument(
        "--enhancer",
        choices=["gfpgan", "none"],
        default=None,
        help="face restoration of every frame (default: none, as in the original)",
    )
    parser.add_argument("--size", type=int, choices=[256, 512], default=None)
    parser.add_argument("--pose_style", type=int, default=None, help="head-motion style in [0, 45]")
    parser.add_argument("--expression_scale", type=float, default=None)
    parser.add_argument("--batch_size", type=int, default=None, help="frames rendered at once")
    parser.add_argument("--seed", type=int, default=None, help="seed for blinks and head motion (default: random)")
    parser.add_argument(
        "--ref_eyeblink", default=None, help="reference video whose expression (eye blinks) the portrait follows"
    )
    parser.add_argument("--ref_pose", default=None, help="reference video whose head motion the portrait copies")
    for axis in ("yaw", "pitch", "roll"):
        parser.add_argument(
            f"--input_{axis}",
            nargs="+",
            type=float,
            default=None,
            metavar="DEG",
            help=f"head {axis} in degrees: one value = constant, several = interpolated over the clip",
        )
    parser.add_argument("--landmarks", default=None, help="68 face landmarks (.npy/.json/.txt) to skip detection")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    parser.add_argument(
        "--precision",
        choices=["exact", "fast"],
        default="exact",
        help="exact: float32 (default); fast: bf16 on CPU / fp16 on CUDA where safe",
    )
    parser.add_argument(
        "--no_compile",
        action="store_true",
        help="skip compiling the networks at start-up (default: compile unless SADTALKER_COMPILE=0)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    base = GenerateOptions.preset(args.preset) if args.preset else GenerateOptions(enhancer="none")
    overrides = {
        name: getattr(args, name)
        for name in (
            "preprocess",
            "still",
            "enhancer",
            "size",
            "pose_style",
            "expression_scale",
            "batch_size",
            "seed",
            "ref_eyeblink",
            "ref_pose",
            "input_yaw",
            "input_pitch",
            "input_roll",
        )
        if getattr(args, name) is not None
    }
    return replace(base, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        options = options_from_args(args)
        landmarks = read_landmarks(args.landmarks) if args.landmarks else None
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch
    from tqdm import tqdm

    from sadtalker.naming import allocate_output_path
    from sadtalker.pipeline import SadTalker
    from sadtalker.render.accel import compile_from_env

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    result_dir = Path(args.result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    try:
        talker = SadTalker(
            args.checkpoint_dir,
            device,
            sizes=(options.size,),
            enhancer=options.enhancer == "gfpgan",
            face_detection=landmarks is None,
            precision=args.precision,
            compile=not args.no_compile and compile_from_env(default=True),
        )
        output = allocate_output_path(result_dir)
        with tqdm(total=100, unit="%", desc="generate") as bar:

            def progress(report: ProgressReport) -> None:
                bar.set_description(report.stage)
                bar.update(round(report.fraction * 100) - bar.n)

            talker.generate(
                args.source_image,
                args.driven_audio,
                output,
                options=options,
                landmarks=landmarks,
                progress=progress,
            )
    except SadTalkerError as exc:  # CheckpointError included
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
