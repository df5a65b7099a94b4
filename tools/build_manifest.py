#!/usr/bin/env python3
"""Regenerate ``sadtalker/checkpoints/checkpoint_manifest.json``: every official checkpoint file, its URL and
tensor layout.

Sources (read here once; the runtime reads only the generated JSON):
  * the 4 SadTalker files: the reference kit's ``checkpoint_layout.json`` (every key, shape, dtype of the
    published v0.0.2-rc files);
  * the 4 facexlib / GFPGAN files: the architectures of the installed facexlib and gfpgan packages, built with
    the arguments their loaders use, and their ``state_dict()`` keys/shapes/dtypes.

usage: .venv/bin/python tools/build_manifest.py [--layout ../shared/reference/checkpoint_layout.json] [--check]
  --check  exit 1 if the committed manifest differs from what would be generated (for CI / reviews).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sadtalker  # noqa: E402,F401  (compat aliases before facexlib/gfpgan imports)
from sadtalker.checkpoints.manifest import (  # noqa: E402
    MANIFEST_FORMAT_VERSION,
    MANIFEST_PATH,
    Layout,
    Manifest,
    TensorSpec,
    encode_layout,
)

DEFAULT_LAYOUT = REPO.parent / "shared" / "reference" / "checkpoint_layout.json"
SADTALKER_RELEASE = "https://github.com/OpenTalker/SadTalker/releases/download/v0.0.2-rc"
FACEXLIB_RELEASE = "https://github.com/xinntao/facexlib/releases/download"
GFPGAN_RELEASE = "https://github.com/TencentARC/GFPGAN/releases/download"
BOTH_SIZES = ["256", "512"]
# torch's BatchNorm accepts checkpoints from older torch without this buffer (it fills in 0).
OPTIONAL_BN = ("num_batches_tracked",)

SADTALKER_LICENCE = "Apache-2.0 (OpenTalker/SadTalker; history and caveats in checkpoints/README.md)"
# Per file: URL, sizes that need it, group, approximate size, what it is, licence. No SHA-256 is published for
# these files by their authors and we could not verify one here, so sha256 stays null (see checkpoints/README.md).
FILES: list[dict[str, Any]] = [
    {
        "name": "SadTalker_V0.0.2_256.safetensors",
        "url": f"{SADTALKER_RELEASE}/SadTalker_V0.0.2_256.safetensors",
        "layout": "sadtalker_v0.0.2",
        "sizes": ["256"],
        "group": "sadtalker",
        "approx_bytes": 725_066_984,
        "purpose": "256-px models: kp_extractor, generator, audio2exp, audio2pose, face_3drecon",
        "licence": SADTALKER_LICENCE,
    },
    {
        "name": "SadTalker_V0.0.2_512.safetensors",
        "url": f"{SADTALKER_RELEASE}/SadTalker_V0.0.2_512.safetensors",
        "layout": "sadtalker_v0.0.2",
        "sizes": ["512"],
        "group": "sadtalker",
        "approx_bytes": 725_066_984,
        "purpose": "512-px models (same keys and shapes as the 256 file, other weights)",
        "licence": SADTALKER_LICENCE,
    },
    {
        "name": "mapping_00229-model.pth.tar",
        "url": f"{SADTALKER_RELEASE}/mapping_00229-model.pth.tar",
        "layout": "mapping_coeff70",
        "sizes": BOTH_SIZES,
        "group": "mapping",
        "approx_bytes": 160_000_000,
        "purpose": "mapping net (70 coefficients) for preprocess crop / extcrop / resize",
        "licence": SADTALKER_LICENCE,
    },
    {
        "name": "mapping_00109-model.pth.tar",
        "url": f"{SADTALKER_RELEASE}/mapping_00109-model.pth.tar",
        "layout": "mapping_coeff73",
        "sizes": BOTH_SIZES,
        "group": "mapping",
        "approx_bytes": 160_000_000,
        "purpose": "mapping net (73 coefficients) for preprocess full / extfull (still mode)",
        "licence": SADTALKER_LICENCE,
    },
    {
        "name": "alignment_WFLW_4HG.pth",
        "url": f"{FACEXLIB_RELEASE}/v0.1.0/alignment_WFLW_4HG.pth",
        "layout": "facexlib_awing_fan_4hg_98",
        "sizes": BOTH_SIZES,
        "group": "face",
        "approx_bytes": 194_000_000,
        "purpose": "AWing FAN, 98 facial landmarks (preprocessing: crop and 3DMM alignment)",
        "licence": "facexlib MIT; architecture/weights from protossw512/AdaptiveWingLoss (Apache-2.0 per facexlib)",
    },
    {
        "name": "detection_Resnet50_Final.pth",
        "url": f"{FACEXLIB_RELEASE}/v0.1.0/detection_Resnet50_Final.pth",
        "layout": "facexlib_retinaface_resnet50",
        "sizes": BOTH_SIZES,
        "group": "face",
        "approx_bytes": 109_500_000,
        "purpose": "RetinaFace ResNet-50 face detector (preprocessing and GFPGAN face helper)",
        "licence": "facexlib MIT; architecture/weights from biubug6/Pytorch_Retinaface (MIT)",
    },
    {
        "name": "parsing_parsenet.pth",
        "url": f"{FACEXLIB_RELEASE}/v0.2.2/parsing_parsenet.pth",
        "layout": "facexlib_parsenet_512_19",
        "sizes": BOTH_SIZES,
        "group": "enhancer",
        "approx_bytes": 85_300_000,
        "purpose": "ParseNet face parsing: GFPGAN paste-back mask",
        "licence": "facexlib MIT; ParseNet from chaofengc/PSFRGAN (CC BY-NC-SA 4.0)",
    },
    {
        "name": "GFPGANv1.4.pth",
        "url": f"{GFPGAN_RELEASE}/v1.3.0/GFPGANv1.4.pth",
        "layout": "gfpgan_v1_clean_512",
        "sizes": BOTH_SIZES,
        "group": "enhancer",
        "approx_bytes": 348_600_000,
        "purpose": "GFPGAN v1.4 face restoration (enhancer 'gfpgan')",
        "licence": "Apache-2.0 (TencentARC/GFPGAN) except third-party parts: StyleGAN2 (NVIDIA licence), DFDNet",
    },
]


def _specs_from_reference(entries: list[Mapping[str, Any]]) -> dict[str, TensorSpec]:
    return {e["key"]: TensorSpec(tuple(int(d) for d in e["shape"]), str(e["dtype"])) for e in entries}


def _specs_from_module(module: Any) -> dict[str, TensorSpec]:
    return {
        key: TensorSpec(tuple(value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in module.state_dict().items()
    }


def _awing_fan() -> Any:
    from facexlib.alignment.awing_arch import FAN

    return FAN(num_modules=4, num_landmarks=98)


def _retinaface() -> Any:
    from facexlib.detection.retinaface import RetinaFace

    return RetinaFace(network_name="resnet50", half=False, device="cpu")


def _parsenet() -> Any:
    from facexlib.parsing.parsenet import ParseNet

    return ParseNet(in_size=512, out_size=512, parsing_ch=19)


def _gfpgan() -> Any:
    from sadtalker.compose.enhance import gfpgan_architecture

    return gfpgan_architecture()


# layout name -> (architecture factory, Layout fields besides name/tensors)
THIRD_PARTY: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
    "facexlib_awing_fan_4hg_98": (
        _awing_fan, {"container": "torch", "state_dict_keys": ("state_dict",), "optional_key_suffixes": OPTIONAL_BN}
    ),
    "facexlib_retinaface_resnet50": (
        _retinaface, {"container": "torch", "strip_key_prefix": "module.", "optional_key_suffixes": OPTIONAL_BN}
    ),
    "facexlib_parsenet_512_19": (_parsenet, {"container": "torch", "optional_key_suffixes": OPTIONAL_BN}),
    "gfpgan_v1_clean_512": (_gfpgan, {"container": "torch", "state_dict_keys": ("params_ema", "params")}),
}  # fmt: skip


def build_layouts(reference: Mapping[str, Any]) -> dict[str, Layout]:
    files = reference["files"]
    st256 = _specs_from_reference(files["SadTalker_V0.0.2_256.safetensors"]["tensors"])
    st512 = _specs_from_reference(files["SadTalker_V0.0.2_512.safetensors"]["tensors"])
    if st256 != st512:
        raise SystemExit("the 256 and 512 SadTalker layouts differ; give them separate manifest layouts")
    layouts = {"sadtalker_v0.0.2": Layout("sadtalker_v0.0.2", "safetensors", st256)}
    mappings = {"mapping_coeff70": "mapping_00229-model.pth.tar", "mapping_coeff73": "mapping_00109-model.pth.tar"}
    for name, file in mappings.items():
        entry = files[file]
        if entry["top_level_keys_read"] != ["mapping", "epoch"]:
            raise SystemExit(f"{file}: unexpected top-level keys {entry['top_level_keys_read']}")
        layouts[name] = Layout(
            name,
            "torch",
            _specs_from_reference(entry["tensors"]),
            state_dict_keys=("mapping",),
            required_top_level_keys=("epoch",),
        )
    for name, (factory, fields) in THIRD_PARTY.items():
        layouts[name] = Layout(name=name, tensors=_specs_from_module(factory()), **fields)
    # Cross-check with the totals the reference kit states.
    for file, entry in files.items():
        layout = layouts[next(f["layout"] for f in FILES if f["name"] == file)]
        stated = entry["total_tensor_bytes"]
        if layout.tensor_bytes != stated:
            raise SystemExit(f"{file}: {layout.tensor_bytes} tensor bytes, the reference says {stated}")
    return layouts


def _dump(value: Any, indent: int = 0) -> str:
    """JSON with one line per module ({param: spec} dicts and lists stay on one line): compact and diffable."""
    pad = " " * indent
    if isinstance(value, dict) and value and not all(isinstance(v, str) for v in value.values()):
        items = [f"{pad} {json.dumps(k)}: {_dump(v, indent + 1).lstrip()}" for k, v in value.items()]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return pad + "[\n" + ",\n".join(_dump(v, indent + 1) for v in value) + "\n" + pad + "]"
    return pad + json.dumps(value, separators=(", ", ": "))


def build_manifest(reference_path: Path) -> str:
    reference = json.loads(reference_path.read_text())
    layouts = build_layouts(reference)
    document = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "generated_by": "tools/build_manifest.py (SadTalker layouts: reference checkpoint_layout.json; "
        "facexlib/gfpgan layouts: installed package architectures)",
        "files": [{**entry, "sha256": None} for entry in FILES],
        "layouts": {name: encode_layout(layout) for name, layout in layouts.items()},
    }
    text = _dump(document) + "\n"
    Manifest.from_dict(json.loads(text))  # round-trip: the runtime must parse what we write
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", type=Path, default=DEFAULT_LAYOUT, help="reference checkpoint_layout.json")
    parser.add_argument("--check", action="store_true", help="compare with the committed manifest, write nothing")
    args = parser.parse_args(argv)
    text = build_manifest(args.layout)
    if args.check:
        current = MANIFEST_PATH.read_text() if MANIFEST_PATH.exists() else ""
        if current != text:
            print(f"{MANIFEST_PATH} is out of date; run tools/build_manifest.py", file=sys.stderr)
            return 1
        print(f"{MANIFEST_PATH} is up to date")
        return 0
    MANIFEST_PATH.write_text(text)
    print(f"wrote {MANIFEST_PATH} ({len(text.encode()) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
