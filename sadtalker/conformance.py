"""Conformance runner: run our pipeline stage by stage on a reference case and save every intermediate array.

    python -m sadtalker.conformance --case CASE_DIR --checkpoints CKPT_DIR --out OUT.npz [--frames K]

A case folder holds the source image, a 16 kHz wav, ``case.json`` (the run's parameters) and ``inputs.npz`` (the
injected inputs only: ``lm68_orig``, ``lm68_crop``, ``blink_ratio``, ``audio2pose_z``).  The output uses the
array names and shapes of the reference kit's ``golden.npz`` so the two can be compared key by key.  The runner
never reads a golden file.

Motion-control cases may also set, in ``case.json``: ``ref_eyeblink`` / ``ref_pose`` (video file names in the
case folder), ``input_yaw`` / ``input_pitch`` / ``input_roll`` (lists of degrees) and ``preprocess``
``extcrop`` / ``extfull``; ``inputs.npz`` then also holds ``ref_video_lm68_orig`` (N, 68, 2: landmarks per
reference frame on the video's own pixels; ``ref_eyeblink_lm68_orig`` / ``ref_pose_lm68_orig`` when the two
videos differ).  Extra outputs: ``ref_video_coeff_73`` (N, 73, all frames of the reference video; the
ref_eyeblink one when both are given, plus ``ref_pose_coeff_73`` when that is another video) and
``kp_driving_first3`` (the first 3 frames' driving keypoints, free-view angles applied).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from sadtalker.audio import compute_audio_features
from sadtalker.compose.paste import PasteBox, aspect_resize, paste_frame
from sadtalker.face.source import SourceFace, prepare_source
from sadtalker.media import load_audio, load_image
from sadtalker.motion.coefficients import MotionResult
from sadtalker.options import GenerateOptions, RenderSize
from sadtalker.pipeline import SadTalker
from sadtalker.render.renderer import DrivingState, frames_to_uint8

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    directory: Path
    image: Path
    audio: Path
    options: GenerateOptions
    rendered_frames: int
    meta: dict
    inputs: dict[str, np.ndarray]

    @classmethod
    def read(cls, directory: str | Path) -> Case:
        directory = Path(directory)
        meta = json.loads((directory / "case.json").read_text())
        with np.load(directory / "inputs.npz") as data:
            inputs = {key: data[key] for key in data.files}

        def optional(name: str) -> Any:
            return meta.get(name) if meta.get(name) not in ("", None) else None

        refs = {name: directory / optional(name) if optional(name) else None for name in ("ref_eyeblink", "ref_pose")}
        options = GenerateOptions(
            ref_eyeblink=refs["ref_eyeblink"],
            ref_pose=refs["ref_pose"],
            input_yaw=optional("input_yaw"),
            input_pitch=optional("input_pitch"),
            input_roll=optional("input_roll"),
            preprocess=meta["preprocess"],
            still=bool(meta["still"]),
            enhancer="none",
            size=cast(RenderSize, int(meta["size"])),  # checked by GenerateOptions
            pose_style=int(meta["pose_style"]),
            expression_scale=float(meta["expression_scale"]),
            batch_size=int(meta.get("batch_size", 2)),
            seed=int(meta.get("seed", 0)),
        )
        return cls(
            directory=directory,
            image=directory / meta["image"],
            audio=directory / meta["audio"],
            options=options,
            rendered_frames=int(meta.get("rendered_frames", 3)),
            meta=meta,
            inputs=inputs,
        )


def face_arrays(face: SourceFace) -> dict[str, np.ndarray]:
    """The face stage's outputs and intermediates under the reference kit's golden keys."""
    arrays: dict[str, np.ndarray] = {
        "lm68_crop": face.landmarks_crop,
        "crop_image": face.crop.crop_image,
        "crop_info_size_wh": np.array(face.crop.crop_info_size_wh, dtype=np.int64),
        "cropped_hw_before_resize": np.array(face.crop.cropped_hw_before_resize, dtype=np.int64),
        "recon_lm68_flipped_in": face.aligned.landmarks_in,
        "trans_params_raw": face.aligned.trans_params,
        "recon_input_224": face.aligned.image_224,
        "recon_lm68_224": face.aligned.landmarks_224.astype(np.float32),
        "face3d_full_coeff_257": face.coeff_257[0],
        "source_full_3dmm_257": face.coeff_257,
        "source_coeff_73": face.source_coeff,
    }
    if face.landmarks_orig is not None:
        arrays["lm68_orig"] = face.landmarks_orig
    geometry = face.crop.geometry
    if geometry is not None:
        arrays["align_rsize_wh"] = np.array(geometry.align_rsize_wh, dtype=np.int64)
        arrays["crop_box_xyxy"] = np.array(geometry.crop_box_xyxy, dtype=np.int64)
        arrays["quad_lx_ly_rx_ry"] = np.array(geometry.quad_lx_ly_rx_ry, dtype=np.float64)
    return arrays


# MotionResult field -> golden key.
MOTION_KEYS: dict[str, str] = {
    "blink_ratio": "blink_ratio",
    "expression": "audio2exp_exp_64",
    "pose_noise": "audio2pose_z",
    "pose_audio_embedding": "audio2pose_audio_emb",
    "pose_chunk_motion": "audio2pose_chunk_motion",
    "pose_motion": "audio2pose_motion_6",
    "pose_raw": "audio2pose_pose_raw_6",
    "pose_smoothed": "audio2pose_pose_savgol_6",
    "coefficients": "coeff_pred_70",
}


def motion_arrays(motion: MotionResult) -> dict[str, np.ndarray]:
    """The motion stage's outputs and intermediates under the reference kit's golden keys (no copies)."""
    return {key: getattr(motion, name) for name, key in MOTION_KEYS.items()}


def run_case(case: Case, talker: SadTalker, frames: int | None = None) -> dict[str, np.ndarray]:
    """Every stage's output for ``case`` under the reference kit's names."""
    options = case.options
    out: dict[str, np.ndarray] = {}
    image = load_image(case.image)
    face = prepare_source(
        image,
        preprocess=options.preprocess,
        size=options.size,
        recon_net=talker.models[options.size].recon,
        landmarks=case.inputs["lm68_orig"],
        crop_landmarks=case.inputs["lm68_crop"],
    )
    out.update(face_arrays(face))
    recon_input = (face.aligned.image_224 / 255.0).astype(np.float32)
    out["recon_input_tensor_sum"] = np.asarray(recon_input.sum(dtype=np.float64), dtype=np.float32)

    features = compute_audio_features(load_audio(case.audio))
    out.update(wav_16k=features.wav, mel=features.mel, indiv_mels=features.indiv_mels)
    # Every frame of a reference video (max None), as the original processes it, for ref_video_coeff_73.
    references = talker.reference_videos(options, None, _reference_landmarks(case))
    if references:
        first = references.get("ref_eyeblink") or references["ref_pose"]
        out["ref_video_coeff_73"] = first.coeff_73
        if "ref_pose" in references and references["ref_pose"] is not first:
            out["ref_pose_coeff_73"] = references["ref_pose"].coeff_73
    motion = talker.predict_motion(
        features,
        face,
        options,
        options.seed or 0,
        blink_ratio=case.inputs.get("blink_ratio"),
        pose_noise=case.inputs.get("audio2pose_z"),
        references=references,
    )
    out.update(motion_arrays(motion))
    out["ref_coeff_70"] = face.source_coeff[0, :70]

    semantics = talker.semantics(motion, face, options)
    num_frames = semantics.num_frames
    out["source_semantics"] = semantics.source.numpy()
    out["target_semantics"] = semantics.target.numpy()
    # The original's batched layout: (batch, ceil(T / batch), C, 27).
    batch = options.batch_size
    assert batch is not None  # Case.options always sets the case's batch size
    out["target_semantics_batched_shape"] = np.array(
        [batch, math.ceil(num_frames / batch), *semantics.target.shape[1:]], dtype=np.int64
    )

    renderer = talker.renderer(options)
    source_image = torch.from_numpy(face.crop_image).permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
    out["source_image_float"] = source_image[0].permute(1, 2, 0).numpy()
    count = min(frames if frames is not None else case.rendered_frames, num_frames)
    angles = talker.pose_override(options, num_frames)
    source = renderer.prepare_source(source_image, semantics.source)

    def drive(frame_count: int) -> DrivingState:
        override = angles.select(slice(0, frame_count), renderer.device) if angles is not None else None
        return renderer.drive(source, semantics.target[:frame_count], override)

    driving = drive(count)
    out["kp_driving_first3"] = (driving if count >= 3 else drive(min(3, num_frames))).kp_driving[:3].cpu().numpy()
    rendered = renderer.render_frames(source, driving)
    out["kp_canonical"] = source.kp_canonical[0].cpu().numpy()
    out["kp_source"] = source.kp_source[0].cpu().numpy()
    out["kp_driving"] = driving.kp_driving.cpu().numpy()
    for name in ("yaw", "pitch", "roll", "t", "exp"):
        out[f"mapping_source_{name}"] = getattr(source.pose, name)[0].cpu().numpy()
        out[f"mapping_driving_{name}"] = getattr(driving.pose, name).cpu().numpy()
    # The reference kit stores this frame as float16 for 512-px cases (README §3); match its dtype.
    render_float0 = rendered[0].cpu().numpy()
    out["render_float0"] = render_float0.astype(np.float16) if options.size == 512 else render_float0
    uint8 = frames_to_uint8(rendered).cpu().numpy()
    out["render_uint8"] = uint8
    video_frame0 = aspect_resize(uint8[:1], face.crop.crop_info_size_wh)[0]
    out["video_frame0_uint8"] = video_frame0
    if options.pastes_back:  # full, extfull
        box = PasteBox(*face.crop.paste_box_xyxy)
        out["paste_full_frame0"] = paste_frame(video_frame0, image, box)
        out["paste_src_hw"] = np.array([box.height, box.width], dtype=np.int64)
        out["paste_center_xy"] = np.array(box.center, dtype=np.int64)
    out["meta_json"] = np.array(json.dumps(case.meta))
    return out


def _reference_landmarks(case: Case) -> dict[str, np.ndarray]:
    """Injected per-frame landmarks of each reference video named by the case."""
    found: dict[str, np.ndarray] = {}
    for field in ("ref_eyeblink", "ref_pose"):
        if getattr(case.options, field) is None:
            continue
        for key in (f"{field}_lm68_orig", "ref_video_lm68_orig"):
            if key in case.inputs:
                found[field] = case.inputs[key]
                break
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True, help="case folder (image, wav, case.json, inputs.npz)")
    parser.add_argument("--checkpoints", required=True, help="checkpoint directory")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--frames", type=int, default=None, help="frames to render (default: case.json's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    case = Case.read(args.case)
    started = time.perf_counter()
    talker = SadTalker(args.checkpoints, args.device, sizes=(case.options.size,), enhancer=False, face_detection=False)
    arrays = run_case(case, talker, args.frames)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, allow_pickle=False, **arrays)
    logger.info("wrote %d arrays to %s in %.1f s", len(arrays), out, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
