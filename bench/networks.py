"""Per-network speed of the precision / memory-format variants, side by side in ONE process, alternated.

    python bench/networks.py --checkpoints /work/ckpt [--repeats 3] [--networks render gfpgan parsenet retinaface]
        [--variants fp32 fp32_cl bf16 bf16_cl] [--compile bf16_cl ...] [--json out.json]

For each per-frame network (render = dense motion + generator for one 256-px frame; GFPGAN and ParseNet's
parsing head for one 512-px face; RetinaFace ResNet-50 on one 256-px frame) and each variant:

* ``fp32``: float32, the default (NCHW) memory format, eager;
* ``fp32_cl``: float32 with weights and inputs in channels_last (NHWC / NDHWC), eager;
* ``bf16``: bfloat16 autocast (fp16 on CUDA), eager;
* ``bf16_cl``: autocast + channels_last, eager;
* ``bf16_clin``: autocast, channels_last inputs only (weights stay as loaded, as fast mode runs), eager;
* ``<variant>+compiled`` for every variant named by ``--compile``: the same under torch.compile (inductor, frozen
  weights), compiled here once (compile seconds printed).

Prints min / median seconds per call, achieved GFLOP/s (FLOPs from torch.utils.flop_counter), the ratio to fp32
and the output's PSNR against fp32 (on the network's output range), then the fp32 and bf16 matmul peaks
(2048^3).  Variants are alternated every repeat (rotating order), so load on a shared machine hits all of them.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from sadtalker.compose.enhance import FACE_SIZE, FaceEnhancer, _stored_noise, gfpgan_forward  # noqa: E402
from sadtalker.models import load_size_models  # noqa: E402
from sadtalker.render.accel import configure_inductor, reduced_dtype, to_channels_last  # noqa: E402
from sadtalker.render.generator import SourceFeatures  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark, also when imported by tests
from speed import matmul_peak_gflops  # noqa: E402

NETWORKS = ("render", "gfpgan", "parsenet", "retinaface")
VARIANTS = ("fp32", "fp32_cl", "bf16", "bf16_cl", "bf16_clin")


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of ``x`` against ``ref`` with ``ref``'s value range as the peak."""
    x, ref = x.float().contiguous(), ref.float().contiguous()
    peak = float(ref.max() - ref.min()) or 1.0
    mse = float(((x - ref) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak**2 / mse)).item()


class Network:
    """One network: a module to convert, example inputs, and how to call it."""

    def __init__(self, module: torch.nn.Module, inputs: list[torch.Tensor], call: Callable[..., torch.Tensor]):
        self.module, self.inputs, self.call = module, inputs, call


def build_networks(checkpoints: Path, device: torch.device, names: list[str]) -> dict[str, Network]:
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Network] = {}
    if "render" in names:
        renderer = load_size_models(checkpoints, 256, device, (70,)).renderers[70]
        with torch.inference_mode():
            source = renderer.prepare_source(torch.rand(1, 3, 256, 256, generator=gen), torch.zeros(70, 27))
            kp_driving = source.kp_source + 0.02 * torch.randn(source.kp_source.shape, generator=gen)
        generator = renderer.generator

        def render(feature_3d: torch.Tensor, motion: torch.Tensor, kp_s: torch.Tensor, kp_d: torch.Tensor):
            return generator.animate(SourceFeatures(feature_3d, motion), kp_s, kp_d)

        features = source.features
        out["render"] = Network(
            generator, [features.feature_3d.clone(), features.motion_feature.clone(), source.kp_source.clone(),
                        kp_driving.clone()], render)  # fmt: skip
    if {"gfpgan", "parsenet", "retinaface"} & set(names):
        enhancer = FaceEnhancer(checkpoints, device)
        face = torch.rand(1, 3, FACE_SIZE, FACE_SIZE, generator=gen) * 2 - 1
        if "gfpgan" in names:
            net = enhancer.gfpgan
            noise = [n.clone() for n in _stored_noise(net)]
            out["gfpgan"] = Network(net, [face.clone(), *noise], lambda f, *nz, net=net: gfpgan_forward(net, f, nz))
        if "parsenet" in names:
            out["parsenet"] = Network(enhancer.parser.net, [face.clone()], enhancer.parser.logits)
        if "retinaface" in names:
            detector = enhancer.helper.face_det
            frame = torch.rand(1, 3, 256, 256, generator=gen) * 255 - 104  # facexlib subtracts the BGR mean

            def detect(x: torch.Tensor, detector: torch.nn.Module = detector) -> torch.Tensor:
                loc, conf, landmarks = detector(x)
                return torch.cat([loc, conf, landmarks], dim=-1)

            out["retinaface"] = Network(detector, [frame], detect)
    return out


def variant_fn(network: Network, variant: str, device: torch.device) -> tuple[Callable[[], Any], list[torch.Tensor]]:
    """A no-argument callable running the network in ``variant`` (module memory format set by the caller)."""
    base = variant.removesuffix("+compiled")
    reduced = base.startswith("bf16")
    channels_last = base.endswith(("_cl", "_clin"))
    inputs = [to_channels_last(t) for t in network.inputs] if channels_last else network.inputs

    def run(*xs: torch.Tensor) -> torch.Tensor:
        if reduced:
            with torch.autocast(device.type, dtype=reduced_dtype(device)):
                return network.call(*xs).float()
        return network.call(*xs)

    return run, inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--compile", nargs="*", choices=VARIANTS, default=[], help="variants also run compiled")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}", flush=True)
    networks = build_networks(args.checkpoints, device, args.networks)
    report: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "networks": {}}

    for name, network in networks.items():
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            reference = network.call(*network.inputs).float()
        gflop = counter.get_total_flops() / 1e9
        variants = list(args.variants) + [f"{v}+compiled" for v in args.compile]
        samples: dict[str, list[float]] = {v: [] for v in variants}
        outputs: dict[str, torch.Tensor] = {}
        compile_s: dict[str, float] = {}
        compiled: dict[str, Callable[..., Any]] = {}
        for variant in variants:
            if variant.endswith("+compiled"):
                configure_inductor()
                network.module.to(memory_format=torch.contiguous_format)
                if variant.removesuffix("+compiled").endswith("_cl"):
                    to_channels_last(network.module)
                fn, inputs = variant_fn(network, variant, device)
                compiled[variant] = torch.compile(fn, dynamic=False)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    compiled[variant](*inputs)
                compile_s[variant] = time.perf_counter() - t0
                print(f"{name}: compiled {variant} in {compile_s[variant]:.1f} s", flush=True)
        for round_index in range(args.repeats + 1):  # round 0 warms up (oneDNN primitive caches)
            order = variants[round_index % len(variants) :] + variants[: round_index % len(variants)]
            for variant in order:
                base = variant.removesuffix("+compiled")
                # Weights in the variant's memory format (frozen compiled graphs hold their own prepacked copies).
                network.module.to(memory_format=torch.contiguous_format)
                if base.endswith("_cl"):
                    to_channels_last(network.module)
                fn, inputs = variant_fn(network, variant, device)
                fn = compiled.get(variant, fn)
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    result = fn(*inputs)
                    elapsed = time.perf_counter() - t0
                if round_index == 0:
                    outputs[variant] = result.float()
                else:
                    samples[variant].append(elapsed)
        network.module.to(memory_format=torch.contiguous_format)
        rows = {}
        base_min = min(samples["fp32"]) if samples.get("fp32") else None
        base_median = statistics.median(samples["fp32"]) if samples.get("fp32") else None
        print(f"\n== {name}: {gflop:.1f} GFLOP per call")
        print(f"{'variant':18s} {'min s':>8s} {'median s':>9s} {'GFLOP/s':>8s} {'x fp32 min/med':>15s} {'PSNR dB':>8s}")
        for variant, values in samples.items():
            row = {"min_s": min(values), "median_s": statistics.median(values), "gflops_per_s": gflop / min(values),
                   "psnr_vs_fp32_db": psnr(outputs[variant], reference)}  # fmt: skip
            if variant in compile_s:
                row["compile_s"] = compile_s[variant]
            ratio = ""
            if base_min and base_median:
                row["speedup_min"] = base_min / row["min_s"]
                row["speedup_median"] = base_median / row["median_s"]
                ratio = f"x{row['speedup_min']:.2f}/{row['speedup_median']:.2f}"
            rows[variant] = row
            print(
                f"{variant:18s} {row['min_s']:8.3f} {row['median_s']:9.3f} {row['gflops_per_s']:8.0f} "
                f"{ratio:>15s} {row['psnr_vs_fp32_db']:8.1f}",
                flush=True,
            )
        report["networks"][name] = {"gflop": gflop, "variants": rows}

    reduced = reduced_dtype(device)
    peaks = {"fp32": matmul_peak_gflops(device, torch.float32), str(reduced): matmul_peak_gflops(device, reduced)}
    report["matmul_peak_gflops"] = peaks
    print("\n== matmul peak (2048^3 mm): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
