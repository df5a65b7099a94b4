"""Speed of the frame loop per mode, side by side in ONE process: baseline / exact / fast, both presets.

    python bench/speed.py --checkpoints /work/ckpt [--frames 2] [--repeats 3] [--json out.json] [--device cuda]

Variants (all on the same inputs, alternated every repeat after a warm-up round):

* ``baseline``: the plain fp32 eager path as it was before issue 10 (render batch 2, GFPGAN batching the
  chunk's faces, the full ParseNet, nothing compiled);
* ``exact``: the default mode (float32; render batch per device, compiled graphs when --compile);
* ``fast``: reduced precision (bf16 on CPU, fp16 on CUDA) where safe, compiled graphs when --compile.

Inputs are the public golden cases (crop_people0_256: crop preset; fullstill_full3_256: full preset, still) with
their injected landmarks.  The enhancer runs its detector on every frame (timed) but restores the case's real
face, one per frame (random RetinaFace weights "detect" hundreds of junk faces, see inject_case_face).  Prints, per
preset and variant, min and median seconds per frame of each stage (render, enhancer steps, paste-back,
encode) and end to end, the ratios to baseline, compile time, the CPU's matmul peak and the achieved GFLOP/s per
network, and the fidelity of fast (and exact) against exact (and baseline).  Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from sadtalker.audio import FPS, compute_audio_features  # noqa: E402
from sadtalker.compose.enhance import FaceEnhancer, _stored_noise, gfpgan_forward  # noqa: E402
from sadtalker.face.align import five_points  # noqa: E402
from sadtalker.face.source import SourceFace  # noqa: E402
from sadtalker.media import load_audio, load_image  # noqa: E402
from sadtalker.options import GenerateOptions  # noqa: E402
from sadtalker.pipeline import SadTalker  # noqa: E402
from sadtalker.render.accel import StaticCompiled, autocast, configure_inductor  # noqa: E402
from sadtalker.render.generator import SourceFeatures  # noqa: E402
from sadtalker.render.windows import RenderSemantics  # noqa: E402
from sadtalker.video import VideoWriter  # noqa: E402

GOLDEN = REPO.parent / "shared" / "reference" / "golden"
CASES = {"crop": "crop_people0_256", "full": "fullstill_full3_256"}
VARIANTS = ("baseline", "exact", "fast")
SIZE = 256
CURRENT_FACE: dict[str, np.ndarray] = {}  # the running case's face, for inject_case_face
# eager_reduced: autocast over the fp32 weights; eager_fast: fast mode's eager path (CPU: bf16 channels-last copies)
ROOFLINE_COLUMNS = ("eager_fp32", "eager_reduced", "eager_fast", "compiled_exact", "compiled_fast")


@dataclass
class Case:
    preset: str
    image: np.ndarray
    wav: np.ndarray
    face: SourceFace
    semantics: RenderSemantics
    options: GenerateOptions
    face_points: np.ndarray  # (5, 2) eyes, nose, mouth corners of the case's face on the enhancer's input frames


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


class StageClock:
    """Seconds per named stage, accumulated by wrapping the stages' methods on their instances."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: object, attribute: str, stage: str) -> None:
        method = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started

        setattr(owner, attribute, timed)


class TimedParser:
    """Stand-in for the helper's ``face_parse`` that times whichever parser it forwards to."""

    def __init__(self, clock: StageClock, parser: Callable[[torch.Tensor], Any]) -> None:
        self.clock, self.parser = clock, parser

    def __call__(self, x: torch.Tensor) -> Any:
        started = time.perf_counter()
        try:
            return self.parser(x)
        finally:
            self.clock.seconds["enhance.parsenet"] += time.perf_counter() - started


def compiled_objects(talker: SadTalker) -> list[StaticCompiled]:
    found: list[StaticCompiled] = []
    for models in talker.models.values():
        for renderer in models.renderers.values():
            found.extend(renderer._compiled.values())
    if talker.enhancer is not None:
        found.extend(talker.enhancer._gfpgan_compiled.values())
        found.extend(talker.enhancer.parser._compiled.values())
    return list({id(c): c for c in found}.values())


def set_variant(talker: SadTalker, clock: StageClock, variant: str, use_compile: bool) -> None:
    """Put the shared pipeline in the state of one variant (no reloading, no recompiling)."""
    enhancer = talker.enhancer
    assert enhancer is not None
    for compiled in compiled_objects(talker):
        compiled.enabled = use_compile and variant != "baseline"
    if variant == "baseline":
        enhancer.face_batch = enhancer.batch_size  # the chunk's faces in one GFPGAN batch, as before
        enhancer.helper.face_parse = TimedParser(clock, enhancer.parser.net)  # both ParseNet heads, eager
    else:
        enhancer.face_batch = 1 if talker.device.type != "cuda" else enhancer.batch_size
        enhancer.helper.face_parse = TimedParser(clock, enhancer.parser)


def variant_options(case: Case, variant: str) -> GenerateOptions:
    if variant == "baseline":
        return replace(case.options, precision="exact", batch_size=2)
    return replace(case.options, precision="exact" if variant == "exact" else "fast", batch_size=None)


def run_frames(
    talker: SadTalker, clock: StageClock, case: Case, variant: str, use_compile: bool, work: Path
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The generate() frame loop for one case; returns (seconds per stage, rendered frames, output frames)."""
    set_variant(talker, clock, variant, use_compile)
    CURRENT_FACE["points"] = case.face_points
    options = variant_options(case, variant)
    clock.seconds.clear()
    rendered, composed = [], []
    noise = torch.Generator().manual_seed(0)
    total = case.semantics.num_frames
    started = time.perf_counter()
    with VideoWriter(
        work / f"{case.preset}_{variant}.mp4", audio=case.wav, num_frames=total, fps=FPS, temp_dir=work
    ) as writer:
        frames_iter = talker.render_frames(case.face, case.semantics, options)
        while True:
            t0 = time.perf_counter()
            frames = next(frames_iter, None)
            clock.seconds["render"] += time.perf_counter() - t0
            if frames is None:
                break
            t0 = time.perf_counter()
            out = talker.compose(frames, case.image, case.face, options, noise)
            clock.seconds["compose"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            writer.write(out)
            clock.seconds["encode"] += time.perf_counter() - t0
            rendered.append(frames)
            composed.append(out)
        t0 = time.perf_counter()
    clock.seconds["encode"] += time.perf_counter() - t0  # ffmpeg drains and muxes on close
    seconds = dict(clock.seconds)
    seconds["end_to_end"] = time.perf_counter() - started
    enhance_steps = ("enhance.detect_align", "enhance.gfpgan", "enhance.paste_and_parse")
    seconds["enhance.paste"] = seconds.get("enhance.paste_and_parse", 0.0) - seconds.get("enhance.parsenet", 0.0)
    seconds["paste_back"] = seconds["compose"] - sum(seconds.get(k, 0.0) for k in enhance_steps)
    seconds.pop("enhance.paste_and_parse", None)
    per_frame = {name: value / total for name, value in seconds.items()}
    return per_frame, np.concatenate(rendered), np.concatenate(composed)


def load_case(talker: SadTalker, preset: str, frames: int) -> Case:
    folder = GOLDEN / CASES[preset]
    meta = json.loads((folder / "case.json").read_text())
    with np.load(folder / "inputs.npz") as inputs:
        landmarks = inputs["lm68_orig"]
    options = GenerateOptions.preset(preset, seed=0)  # type: ignore[arg-type]
    image = load_image(folder / meta["image"])
    wav = load_audio(folder / meta["audio"])
    face = talker.prepare_face(image, options, landmarks, meta["image"])
    motion = talker.predict_motion(compute_audio_features(wav), face, options, seed=0)
    semantics = talker.semantics(motion, face, options)
    semantics = RenderSemantics(semantics.source, semantics.target[:frames])
    if preset == "full":  # the enhancer sees the whole photo, the face pasted back
        assert face.landmarks_orig is not None
        points = five_points(face.landmarks_orig).astype(np.float32)
    else:  # the enhancer sees the rendered crop
        points = (five_points(face.landmarks_crop) * (SIZE / face.crop.crop_image.shape[1])).astype(np.float32)
    return Case(preset, image, wav[: int(frames / FPS * 16000) + 1], face, semantics, options, points)


def inject_case_face(enhancer: FaceEnhancer, current: dict[str, np.ndarray]) -> None:
    """Run the detector on every frame (its cost is part of the step), then align the case's real face.

    Random (synthetic) RetinaFace weights "find" junk faces far outside the frame, and which junk box is the
    largest flips with a 1-level change of the input (measured: exact vs baseline, full preset, frame 0:
    landmarks thousands of pixels apart, 14 levels in the output).  The detection is still timed; GFPGAN and
    the paste-back then work on the golden case's face, as they would with real weights.
    """
    align = enhancer._align

    def detect_then_align(rgb: np.ndarray, landmarks: Any) -> Any:
        align(rgb, None)  # the detector's work (its junk faces are dropped)
        return align(rgb, [current["points"]])

    enhancer._align = detect_then_align  # type: ignore[method-assign]


# -- roofline ---------------------------------------------------------------------------------------------------


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def count_flops(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return float(counter.get_total_flops())


def network_calls(talker: SadTalker, case: Case) -> dict[str, Callable[[], Any]]:
    """One frame (one face) through each per-frame network, eager fp32."""
    renderer = talker.renderer(case.options)
    image = torch.from_numpy(case.face.crop_image).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    source = renderer.prepare_source(image, case.semantics.source)
    driving = renderer.drive(source, case.semantics.target[:1].float())
    generator = renderer.generator
    motion_net = generator.dense_motion_network
    features: SourceFeatures = source.features
    with torch.inference_mode():
        motion = motion_net(features.motion_feature, source.kp_source, driving.kp_driving)
    enhancer: FaceEnhancer = talker.enhancer  # type: ignore[assignment]
    face = torch.zeros(1, 3, 512, 512).uniform_(-1, 1)
    noise = [
        getattr(enhancer.gfpgan.stylegan_decoder.noises, f"noise{i}")
        for i in range(enhancer.gfpgan.stylegan_decoder.num_layers)
    ]

    def rest_of_generator() -> torch.Tensor:
        volume = features.feature_3d
        warped = torch.nn.functional.grid_sample(volume, motion.deformation, align_corners=False)
        b, c, d, h, w = warped.shape
        out = generator.fourth(generator.third(warped.view(b, c * d, h, w))) * motion.occlusion_map
        return generator.decoder(out)

    return {
        "dense_motion": lambda: motion_net(features.motion_feature, source.kp_source, driving.kp_driving),
        "generator_decoder": rest_of_generator,
        "render_total": lambda: renderer.render_frames(source, driving),
        "gfpgan": lambda: gfpgan_forward(enhancer.gfpgan, face, noise),
        "parsenet_full": lambda: enhancer.parser.net(face),
        "parsenet_mask_only": lambda: enhancer.parser.logits(face),
    }


def time_call(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def eager_row(fn: Callable[[], Any], device: torch.device, repeats: int) -> dict[str, Any]:
    """FLOPs of ``fn`` and its eager fp32 / eager autocast timings."""
    flops = count_flops(fn)
    row: dict[str, Any] = {"gflop": flops / 1e9}

    def reduced() -> Any:
        with autocast(device, "fast"):
            return fn()

    for label, seconds in {"eager_fp32": time_call(fn, repeats), "eager_reduced": time_call(reduced, repeats)}.items():
        row[label] = {
            "min_s": min(seconds),
            "median_s": statistics.median(seconds),
            "gflops_per_s": flops / min(seconds) / 1e9,
        }
    return row


def roofline(talker: SadTalker, case: Case, repeats: int, use_compile: bool) -> dict[str, Any]:
    """FLOPs per network and achieved GFLOP/s: eager fp32, eager bf16/fp16 autocast on the fp32 weights, fast
    mode's eager path, and compiled (if built)."""
    calls = network_calls(talker, case)
    device = talker.device
    result: dict[str, Any] = {}
    compiled_objects_ = [c for c in compiled_objects(talker) if c.enabled]
    for compiled_object in compiled_objects_:  # FLOPs and the eager columns: eager code, whatever was compiled
        compiled_object.enabled = False
    try:
        eager_rows = {name: eager_row(fn, device, repeats) for name, fn in calls.items()}
    finally:
        for compiled_object in compiled_objects_:
            compiled_object.enabled = True
    result.update(eager_rows)
    # What fast mode runs eagerly (on CPU: the bf16 channels-last weight copies), compiled graphs switched off.
    renderer = talker.renderer(case.options)
    enhancer_: FaceEnhancer = talker.enhancer  # type: ignore[assignment]
    image = torch.from_numpy(case.face.crop_image).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    source = renderer.prepare_source(image, case.semantics.source)
    driving = renderer.drive(source, case.semantics.target[:1].float())
    face = torch.zeros(1, 3, 512, 512).uniform_(-1, 1)
    noise = _stored_noise(enhancer_.gfpgan)
    fast_calls = {
        "render_total": lambda: renderer.render_frames(source, driving, "fast"),
        "gfpgan": lambda: enhancer_._gfpgan_fn("fast", compiled=False)(face, *noise),
        "parsenet_mask_only": lambda: enhancer_.parser._eager("fast")(face),
    }
    switched = [c for c in compiled_objects(talker) if c.enabled]
    for compiled_object in switched:
        compiled_object.enabled = False
    try:
        for name, fn in fast_calls.items():
            seconds = time_call(fn, repeats)
            result[name]["eager_fast"] = {
                "min_s": min(seconds),
                "median_s": statistics.median(seconds),
                "gflops_per_s": result[name]["gflop"] / min(seconds),
            }
    finally:
        for compiled_object in switched:
            compiled_object.enabled = True
    if use_compile:
        # The compiled per-frame graphs as the modes run them (render = dense motion + generator, batch 1).
        renderer = talker.renderer(case.options)
        image = torch.from_numpy(case.face.crop_image).permute(2, 0, 1).unsqueeze(0).float() / 255.0
        source = renderer.prepare_source(image, case.semantics.source)
        driving = renderer.drive(source, case.semantics.target[:1].float())
        enhancer: FaceEnhancer = talker.enhancer  # type: ignore[assignment]
        face = torch.zeros(1, 3, 512, 512).uniform_(-1, 1)
        for precision in ("exact", "fast"):
            if precision not in enhancer.parser._compiled or not renderer.compiled_batch_sizes(precision):
                continue
            compiled = {
                "render_total": lambda p=precision: renderer.render_frames(source, driving, p),
                "gfpgan": lambda p=precision: enhancer.restore_faces([np.zeros((512, 512, 3), np.uint8)], precision=p),
                "parsenet_mask_only": lambda p=precision: enhancer.parser._compiled[p](face),
            }
            for name, fn in compiled.items():
                before = sum(c.fallbacks for c in compiled_objects(talker))
                seconds = time_call(fn, repeats)
                fell_back = sum(c.fallbacks for c in compiled_objects(talker)) - before
                if fell_back:  # an eager run timed as "compiled" would be a lie: say so
                    print(f"roofline {name} compiled {precision}: {fell_back} calls ran eagerly", flush=True)
                result[name][f"compiled_{precision}"] = {
                    "min_s": min(seconds),
                    "median_s": statistics.median(seconds),
                    "gflops_per_s": result[name]["gflop"] / min(seconds),
                    "eager_fallbacks": fell_back,
                }
    return result


# -- report -----------------------------------------------------------------------------------------------------


def summarise(samples: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for preset, by_variant in samples.items():
        summary[preset] = {}
        base = by_variant.get("baseline", {})
        for variant, stages in by_variant.items():
            rows = {}
            for stage, values in sorted(stages.items()):
                row = {"min_s": min(values), "median_s": statistics.median(values)}
                if stage in base and variant != "baseline" and min(values) > 0:
                    row["speedup_min"] = min(base[stage]) / min(values)
                    row["speedup_median"] = statistics.median(base[stage]) / statistics.median(values)
                rows[stage] = row
            summary[preset][variant] = rows
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    for preset, by_variant in summary.items():
        print(f"\n== preset {preset}: seconds per frame (min / median), speed-up vs baseline (min / median)")
        stages = sorted({stage for rows in by_variant.values() for stage in rows}, key=lambda s: (s == "end_to_end", s))
        header = f"{'stage':22s}" + "".join(f"{v:>30s}" for v in by_variant)
        print(header)
        for stage in stages:
            line = f"{stage:22s}"
            for rows in by_variant.values():
                row = rows.get(stage)
                if row is None:
                    line += f"{'-':>30s}"
                    continue
                cell = f"{row['min_s']:.3f}/{row['median_s']:.3f}"
                if "speedup_min" in row:
                    cell += f" x{row['speedup_min']:.2f}/{row['speedup_median']:.2f}"
                line += f"{cell:>30s}"
            print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--frames", type=int, default=2, help="frames per clip and variant (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the repeats")
    parser.add_argument("--presets", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="exact/fast without torch.compile (eager levers only)",
    )
    parser.add_argument(
        "--compile-precisions",
        nargs="+",
        choices=["exact", "fast"],
        default=["exact", "fast"],
        help="which modes get compiled graphs (compiling costs minutes per mode on a CPU)",
    )
    parser.add_argument("--roofline-repeats", type=int, default=2, help="0 skips the per-network roofline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "frames": args.frames,
        "repeats": args.repeats,
    }
    started = time.perf_counter()
    talker = SadTalker(
        args.checkpoints,
        device,
        sizes=(SIZE,),
        enhancer=True,
        enhancer_max_faces=1,
        face_detection=False,
        compile=False,
    )
    report["load_s"] = time.perf_counter() - started
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; load {report['load_s']:.1f} s"
    )
    compile_s: dict[str, float] = {}
    if args.compile:
        configure_inductor()
        renderers = list(talker.models[SIZE].renderers.values())
        for precision in ("exact", "fast"):
            if precision not in args.variants or precision not in args.compile_precisions:
                continue
            assert talker.enhancer is not None
            steps = {
                "render": lambda p=precision: renderers[0].compile(SIZE, 1 if device.type != "cuda" else 8, p),
                "gfpgan+parsenet": lambda p=precision: talker.enhancer.compile(p),
            }
            for step, build in steps.items():
                t0 = time.perf_counter()
                try:
                    build()
                except Exception as exc:  # noqa: BLE001  (a benchmark reports a failed lever and goes on)
                    print(f"compile {precision} {step} FAILED: {type(exc).__name__}: {exc}", flush=True)
                    compile_s[f"{precision} {step} FAILED"] = time.perf_counter() - t0
                    continue
                compile_s[f"{precision} {step}"] = time.perf_counter() - t0
                print(f"compile {precision} {step}: {time.perf_counter() - t0:.1f} s", flush=True)
            for other in renderers[1:]:
                other.share_compiled(renderers[0])
    report["compile_s"] = compile_s
    report["rss_after_load_mib"] = peak_rss_mib()

    cases = {preset: load_case(talker, preset, args.frames) for preset in args.presets}
    clock = StageClock()
    enhancer = talker.enhancer
    assert enhancer is not None
    inject_case_face(enhancer, CURRENT_FACE)
    clock.wrap(enhancer, "_align", "enhance.detect_align")
    clock.wrap(enhancer, "restore_faces", "enhance.gfpgan")
    clock.wrap(enhancer, "_paste", "enhance.paste_and_parse")

    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        p: {v: defaultdict(list) for v in args.variants} for p in args.presets
    }
    outputs: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for round_index in range(args.warmup + args.repeats):
            timed = round_index >= args.warmup
            # Rotate the order every round so no variant always runs first (or right after a heavy one).
            order = (
                args.variants[round_index % len(args.variants) :] + args.variants[: round_index % len(args.variants)]
            )
            for preset, case in cases.items():
                for variant in order:
                    per_frame, rendered, composed = run_frames(talker, clock, case, variant, args.compile, work)
                    outputs[(preset, variant)] = (rendered, composed)
                    rss[variant] = max(rss.get(variant, 0.0), peak_rss_mib())
                    if timed:
                        for stage, value in per_frame.items():
                            samples[preset][variant][stage].append(value)
                    stages = " ".join(f"{k}={v:.2f}" for k, v in sorted(per_frame.items()) if k != "end_to_end")
                    print(
                        f"round {round_index}{'' if timed else ' (warm-up)'} {preset:4s} {variant:8s} "
                        f"{per_frame['end_to_end']:.2f} s/frame ({stages})",
                        flush=True,
                    )

    summary = summarise(samples)
    print_summary(summary)
    fallbacks = {c.name: c.fallbacks for c in compiled_objects(talker)}
    report["compiled_fallbacks"] = fallbacks
    if fallbacks:
        print("compiled graphs, calls that fell back to eager: " + ", ".join(f"{k} {v}" for k, v in fallbacks.items()))
    report["per_frame"] = summary
    report["peak_rss_mib_after_variant"] = rss

    fidelity: dict[str, Any] = {}
    for preset in args.presets:
        pairs = [("fast", "exact"), ("exact", "baseline")]
        for a, b in pairs:
            if (preset, a) not in outputs or (preset, b) not in outputs:
                continue
            entry = {}
            for k, label in enumerate(("rendered", "output")):
                x, y = outputs[(preset, a)][k], outputs[(preset, b)][k]
                values = [psnr(fx, fy) for fx, fy in zip(x, y, strict=True)]
                entry[label] = {
                    "psnr_mean_db": float(np.mean(values)),
                    "psnr_worst_db": float(min(values)),
                    "max_abs_levels": int(np.abs(x.astype(np.int16) - y).max()),
                }
            fidelity[f"{preset}: {a} vs {b}"] = entry
    report["fidelity"] = fidelity
    print("\n== fidelity (PSNR mean / worst frame, max abs difference in levels)")
    for key, entry in fidelity.items():
        print(
            f"{key:26s} "
            + "  ".join(
                f"{label}: {e['psnr_mean_db']:.1f}/{e['psnr_worst_db']:.1f} dB, max {e['max_abs_levels']}"
                for label, e in entry.items()
            )
        )

    peaks = {"fp32": matmul_peak_gflops(device, torch.float32)}
    peaks["bf16" if device.type != "cuda" else "fp16"] = matmul_peak_gflops(
        device, torch.bfloat16 if device.type != "cuda" else torch.float16
    )
    report["matmul_peak_gflops"] = peaks
    print("\n== matmul peak (2048^3 mm): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))  # kept if the roofline below fails
    if args.roofline_repeats > 0:
        first = next(iter(cases.values()))
        networks = roofline(talker, first, args.roofline_repeats, args.compile)
        report["networks"] = networks
        print(f"{'network':20s} {'GFLOP':>7s}  " + "  ".join(f"{k:>22s}" for k in ROOFLINE_COLUMNS))
        for name, row in networks.items():
            cells = []
            for key in ROOFLINE_COLUMNS:
                cell = row.get(key)
                cells.append(
                    f"{'-':>22s}" if cell is None else f"{cell['min_s']:.3f}s {cell['gflops_per_s']:5.0f}GF/s".rjust(22)
                )
            print(f"{name:20s} {row['gflop']:7.1f}  " + "  ".join(cells))
    report["peak_rss_mib"] = peak_rss_mib()
    print(f"\npeak RSS {report['peak_rss_mib']:.0f} MiB (after load {report['rss_after_load_mib']:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
