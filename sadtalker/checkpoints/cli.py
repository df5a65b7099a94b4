"""``python -m sadtalker.checkpoints download|verify|list`` (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sadtalker.checkpoints.download import ENV_MIRROR, DownloadError, download_checkpoints
from sadtalker.checkpoints.files import DEFAULT_DIR, ENV_DIR, normalize_sizes
from sadtalker.checkpoints.manifest import default_manifest
from sadtalker.checkpoints.verify import fix_advice, format_problems, verify_checkpoints


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sadtalker.checkpoints", description="The official checkpoint files: download, verify, list."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser, *, with_dir: bool = True) -> None:
        if with_dir:
            sub.add_argument(
                "--dir",
                type=Path,
                default=Path(os.environ.get(ENV_DIR, DEFAULT_DIR)),
                help=f"checkpoint directory (default: ${ENV_DIR} or '{DEFAULT_DIR}')",
            )
        sub.add_argument("--size", default="256", help="render size(s): 256, 512, all, or e.g. 256,512")
        sub.add_argument("--no-enhancer", action="store_true", help="leave out the GFPGAN enhancer files")

    download = commands.add_parser("download", help="download missing or damaged files, verify them")
    common(download)
    download.add_argument(
        "--mirror",
        default=os.environ.get(ENV_MIRROR) or None,
        help=f"base URL serving every file by name (default: ${ENV_MIRROR}, else the official release URLs)",
    )
    download.add_argument("--retries", type=int, default=3, help="failed attempts allowed per file (default 3)")
    download.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    download.add_argument("--no-progress", action="store_true", help="no progress bars")
    common(commands.add_parser("verify", help="check every file's keys, shapes and dtypes; exit 1 on a problem"))
    common(commands.add_parser("list", help="show the files a size needs"), with_dir=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sizes = normalize_sizes(args.size.split(","))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    include_enhancer = not args.no_enhancer
    manifest = default_manifest()
    if args.command == "list":
        for spec in manifest.select(sizes, include_enhancer=include_enhancer):
            print(f"{spec.name:36s} ~{spec.approx_bytes / 1e6:5.0f} MB  {spec.group:9s} {spec.url}")
        return 0
    if args.command == "download":
        try:
            results = download_checkpoints(
                args.dir,
                sizes,
                include_enhancer=include_enhancer,
                manifest=manifest,
                mirror=args.mirror,
                retries=args.retries,
                timeout=args.timeout,
                progress=not args.no_progress,
            )
        except DownloadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        fetched = sum(r.status == "downloaded" for r in results)
        print(f"{len(results)} file(s) ready in {args.dir} ({fetched} downloaded, {len(results) - fetched} present)")
        return 0
    problems = verify_checkpoints(args.dir, sizes, include_enhancer=include_enhancer, manifest=manifest)
    if problems:
        print(format_problems(problems, limit_per_file=50), file=sys.stderr)
        print(f"FAILED: {len(problems)} problem(s). Fix: {fix_advice(args.dir, sizes, problems)}", file=sys.stderr)
        return 1
    count = len(manifest.select(sizes, include_enhancer=include_enhancer))
    print(f"OK: {count} file(s) in {args.dir} match the manifest")
    return 0
