"""Issue 14 motion controls: reference videos (ref_eyeblink, ref_pose), free-view angles, extcrop/extfull.

Synthetic weights, injected landmarks (per reference-video frame), tiny reference videos made here with the
bundled ffmpeg from the public golden image.  Expected values come from the original's code as described in each
test (hand-computed where the rule is arithmetic, the golden arrays of the original where it is geometry).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile
import torch
from helpers import load_golden

from sadtalker import errors
from sadtalker.audio import compute_audio_features
from sadtalker.conformance import Case, run_case
from sadtalker.face.crop import crop_face, landmarks_in_crop
from sadtalker.face.detect import FaceLandmarks
from sadtalker.face.reference import check_reference_video, reference_coefficients
from sadtalker.media import ffmpeg_exe, load_audio, load_image
from sadtalker.motion.freeview import camera_angles
from sadtalker.motion.reference import apply_reference_pose, fit_to_length, reference_expression
from sadtalker.options import GenerateOptions
from sadtalker.pipeline import SadTalker
from sadtalker.render.renderer import PoseOverride
from sadtalker.render.transform import transform_keypoints
from sadtalker.video import probe_video

CROP_CASE = "crop_people0_256"
FULL_CASE = "fullstill_full3_256"
IMAGES = {CROP_CASE: "people_0.png", FULL_CASE: "full3.png"}
SHIFTS = (0, 6, -5)  # horizontal shift (px) of each reference frame: the face moves, so coefficients differ


# -- helpers


def _case(reference_dir: Path, name: str = CROP_CASE) -> tuple[Path, np.ndarray, Path]:
    case_dir = reference_dir / "golden" / name
    with np.load(case_dir / "inputs.npz") as inputs:
        landmarks = inputs["lm68_orig"]
    return case_dir / IMAGES[name], landmarks, next(case_dir.glob("*.wav"))


def _short_wav(source: Path, out: Path, frames: int) -> Path:
    samples, rate = soundfile.read(source, dtype="int16")
    soundfile.write(out, samples[: frames * 640 + 320], rate)
    return out


def _write_video(path: Path, frames: list[np.ndarray], *, fps: int = 25, codec: str = "ffv1") -> Path:
    """RGB frames -> a video file with the bundled ffmpeg (ffv1 + bgr0: lossless; libx264: a common mp4)."""
    height, width = frames[0].shape[:2]
    pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            str(fps),
            "-i",
            "-",
            "-c:v",
            codec,
            "-pix_fmt",
            pix_fmt,
            str(path),
        ],
        input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames),
        check=True,
    )
    return path


def _reference_video(tmp_path: Path, reference_dir: Path, name: str = "ref.mkv", **kwargs) -> tuple[Path, np.ndarray]:
    """Frames = the golden portrait shifted by SHIFTS; returns the video and its (N, 68, 2) landmarks."""
    image_path, landmarks, _ = _case(reference_dir)
    image = load_image(image_path)
    frames = [np.roll(image, shift, axis=1) for shift in SHIFTS]
    per_frame = np.stack([landmarks + np.array([shift, 0], np.float32) for shift in SHIFTS])
    return _write_video(tmp_path / name, frames, **kwargs), per_frame


# -- free view: the original's gen_camera_pose


def test_camera_angles_follow_the_originals_interpolation() -> None:
    # One value: that angle on every frame.
    np.testing.assert_array_equal(camera_angles([15], 4), np.full(4, 15, np.float32))
    # [0, 30] over 4 frames: step = 30 / (4 - 1) = 10; np.arange(0, 30, 10) = [0, 10, 20]; padded with 20
    # (the end value itself is never listed: arange excludes it).
    np.testing.assert_array_equal(camera_angles([0, 30], 4), [0, 10, 20, 20])
    # [0, 10, 0] over 5 frames: step 20 / 4 = 5; [0, 5] + [10, 5]; padded with 5.
    np.testing.assert_array_equal(camera_angles([0, 10, 0], 5), [0, 5, 10, 5, 5])
    # [0, -9, 9] over 3 frames: step 27 / 2 = 13.5; arange(0, -9, -13.5) = [0]; arange(-9, 9, 13.5) = [-9, 4.5].
    np.testing.assert_array_equal(camera_angles([0, -9, 9], 3), [0, -9, 4.5])
    # Longer than the clip: cut.  [0, 40] over 2 frames: step 40; arange(0, 40, 40) = [0]; padded -> [0, 0].
    np.testing.assert_array_equal(camera_angles([0, 40], 2), [0, 0])
    assert camera_angles([0, 20, -20], 70).dtype == np.float32


def test_camera_angles_where_the_original_crashes() -> None:
    # Equal neighbours: the original divides by their zero difference; here the segment gets no frames.
    np.testing.assert_array_equal(camera_angles([0, 0, 30], 4), camera_angles([0, 30], 4))
    # All equal, or one frame: the first value throughout (the original divides by zero).
    np.testing.assert_array_equal(camera_angles([7, 7], 3), [7, 7, 7])
    np.testing.assert_array_equal(camera_angles([5, 25], 1), [5])


# -- options


def test_options_defaults_change_nothing_and_are_validated(tmp_path: Path) -> None:
    for options in (GenerateOptions(), GenerateOptions.preset("crop"), GenerateOptions.preset("full")):
        assert (options.ref_eyeblink, options.ref_pose) == (None, None)
        assert (options.input_yaw, options.input_pitch, options.input_roll) == (None, None, None)
        assert not options.free_view
    assert GenerateOptions.preset("full").coeff_nc == 73 and GenerateOptions.preset("crop").coeff_nc == 70
    assert GenerateOptions(preprocess="extfull").coeff_nc == 73 and GenerateOptions(preprocess="extcrop").coeff_nc == 70
    options = GenerateOptions(ref_pose=str(tmp_path / "v.mp4"), input_yaw=[0, 20], input_roll=5)
    assert options.ref_pose == tmp_path / "v.mp4" and options.input_yaw == (0, 20) and options.input_roll == (5,)
    for bad in (
        dict(input_yaw=[]),
        dict(input_yaw=["10"]),
        dict(input_pitch=[float("nan")]),
        dict(input_roll=[400]),
        dict(ref_eyeblink=""),
        dict(ref_pose=3),
        dict(preprocess="extra"),
    ):
        with pytest.raises(ValueError):
            GenerateOptions(**bad)


# -- reference coefficients as the original uses them


def test_reference_tiling_and_relative_pose_by_hand() -> None:
    ref = np.arange(3 * 73, dtype=np.float32).reshape(3, 73)
    # Shorter than the audio: repeated from the start (div whole copies + the first T % N rows); longer: cut.
    np.testing.assert_array_equal(fit_to_length(ref, 7)[:, 0], ref[[0, 1, 2, 0, 1, 2, 0], 0])
    np.testing.assert_array_equal(fit_to_length(ref, 2), ref[:2])
    np.testing.assert_array_equal(reference_expression(ref, 4), ref[[0, 1, 2, 0], :64])
    pred = np.ones((4, 70), np.float32)
    posed = apply_reference_pose(pred, ref)
    np.testing.assert_array_equal(posed[:, :64], pred[:, :64])
    # using_refpose: pred + (ref[t] - ref[0]) on columns 64:70; rows of ref differ by 73 per frame.
    np.testing.assert_array_equal(posed[:, 64:70], np.repeat([[1], [74], [147], [1]], 6, axis=1))
    assert np.all(pred == 1)  # the caller's array is untouched


# -- extcrop / extfull geometry on the public golden images


@pytest.mark.parametrize("case", [CROP_CASE, FULL_CASE])
def test_ext_crop_boxes_for_the_golden_images(reference_dir: Path, case: str) -> None:
    """Expected boxes derived from the original's code: ``Preprocesser.crop`` computes the same ``align_face``
    geometry for every mode and, with ``still=True`` (any 'ext' preprocess), stops after cutting the border box
    ``img[cly:cry, clx:crx]`` instead of also cutting the quad ``[ly:ry, lx:rx]``.  So the ext crop box is the
    golden ``crop_box_xyxy`` recorded by the original for these images, written out here:
    people_0.png (474x474) -> (63, 0, 400, 309); full3.png (512x768) -> (17, 139, 412, 535).  ``crop_info[0]``
    (the aspect-resize size) stays the quad's, and extfull pastes over the border box (``extended_crop``)."""
    expected_box = {CROP_CASE: (63, 0, 400, 309), FULL_CASE: (17, 139, 412, 535)}[case]
    image_path, landmarks, _ = _case(reference_dir, case)
    golden = load_golden(reference_dir / "golden" / case)
    image = load_image(image_path)
    assert tuple(golden["crop_box_xyxy"]) == expected_box
    clx, cly, crx, cry = expected_box
    for mode in ("extcrop", "extfull"):
        crop = crop_face(image, landmarks, preprocess=mode, size=256)
        assert crop.crop_box_xyxy == expected_box
        assert crop.cropped_hw_before_resize == (cry - cly, crx - clx)
        np.testing.assert_array_equal(crop.crop_image, cv2.resize(image[cly:cry, clx:crx], (256, 256)))
        assert crop.crop_info_size_wh == tuple(golden["crop_info_size_wh"])  # the quad's size, as the original
        assert crop.paste_box_xyxy == expected_box


# -- reference videos -> coefficients


def test_reference_video_coefficients(talker: SadTalker, reference_dir: Path, tmp_path: Path) -> None:
    video, landmarks = _reference_video(tmp_path, reference_dir)
    golden = load_golden(reference_dir / "golden" / CROP_CASE)
    recon = talker.models[256].recon
    ref = reference_coefficients(video, preprocess="crop", recon_net=recon, landmarks=landmarks)
    assert ref.coeff_73.shape == (3, 73) and ref.coeff_73.dtype == np.float32 and ref.fps == 25
    # Frame 0 is the golden portrait, decoded losslessly: the same crop, alignment and 3DMM as the original's
    # source-image path at size 256, so the original's recorded source coefficients.
    np.testing.assert_allclose(ref.coeff_73[0], golden["source_coeff_73"][0], atol=1e-4)
    assert np.abs(ref.coeff_73[1] - ref.coeff_73[0]).max() > 1e-3  # the shifted frames are other faces
    # Decoding stops after max_frames; the rows are the same.
    first2 = reference_coefficients(video, preprocess="crop", recon_net=recon, landmarks=landmarks, max_frames=2)
    np.testing.assert_array_equal(first2.coeff_73, ref.coeff_73[:2])
    # A common container/codec (H.264 mp4) decodes too.
    mp4, _ = _reference_video(tmp_path, reference_dir, name="ref.mp4", codec="libx264")
    lossy = reference_coefficients(mp4, preprocess="crop", recon_net=recon, landmarks=landmarks)
    assert lossy.coeff_73.shape == (3, 73) and np.all(np.isfinite(lossy.coeff_73))


def test_reference_video_errors(
    talker: SadTalker, reference_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    video, landmarks = _reference_video(tmp_path, reference_dir)
    recon = talker.models[256].recon
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    for path, match in ((tmp_path / "missing.mp4", "not found"), (text, "not a readable video")):
        with pytest.raises(errors.ReferenceVideoError, match=match) as raised:
            reference_coefficients(path, preprocess="crop", recon_net=recon, landmarks=landmarks, field="ref_pose")
        assert raised.value.field == "ref_pose"

    # Detection: no face in the first frame -> an actionable error (the original crashes); no face in a later
    # frame's crop -> the previous frame's landmarks (the original's fallback).
    calls: list[bool] = []
    crop = crop_face(load_image(_case(reference_dir)[0]), landmarks[0], preprocess="crop", size=256)
    in_crop = [landmarks_in_crop(crop, lm) for lm in landmarks]  # every frame's crop has frame 0's box

    def detect(image, *, image_name="", rgb_as_bgr=False):
        calls.append(rgb_as_bgr)
        if rgb_as_bgr:  # the first frame, at its own resolution
            return FaceLandmarks(landmarks[0], (0, 0, 1, 1), 1.0, 1)
        frame = len(calls) - 2
        if frame == 1:
            raise errors.NoFaceError("no face")
        return FaceLandmarks(in_crop[frame], (0, 0, 1, 1), 1.0, 1)

    monkeypatch.setattr(talker.landmarker, "detect", detect)
    found = reference_coefficients(video, preprocess="crop", recon_net=recon, landmarker=talker.landmarker)
    assert calls == [True, False, False, False] and found.frames_without_face == 1
    # Frame 1 used frame 0's landmarks on its own crop: the same as injecting frame 0's landmarks for it.
    reused = reference_coefficients(video, preprocess="crop", recon_net=recon, landmarks=landmarks[[0, 0, 2]])
    np.testing.assert_array_equal(found.coeff_73, reused.coeff_73)

    def no_face(*args, **kwargs):
        raise errors.NoFaceError("no face")

    monkeypatch.setattr(talker.landmarker, "detect", no_face)
    with pytest.raises(errors.ReferenceVideoError, match="first frame") as raised:
        reference_coefficients(
            video, preprocess="crop", recon_net=recon, landmarker=talker.landmarker, field="ref_eyeblink"
        )
    assert raised.value.field == "ref_eyeblink"

    # Another frame rate: frames are used one per output frame, as the original does, with a warning.
    fast, _ = _reference_video(tmp_path, reference_dir, name="fast.mkv", fps=50)
    with caplog.at_level(logging.WARNING, logger="sadtalker.face.reference"):
        ref = reference_coefficients(fast, preprocess="crop", recon_net=recon, landmarks=landmarks)
    assert ref.num_frames == 3 and ref.fps == 50 and "25 fps" in caplog.text


# -- motion with references


@pytest.fixture(scope="module")
def motion_inputs(talker: SadTalker, reference_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("motion")
    image_path, landmarks, wav = _case(reference_dir)
    video, video_landmarks = _reference_video(tmp, reference_dir)
    features = compute_audio_features(load_audio(_short_wav(wav, tmp / "speech.wav", frames=8)))
    options = GenerateOptions(enhancer="none", seed=3, ref_eyeblink=video, ref_pose=video)
    face = talker.prepare_face(load_image(image_path), options, landmarks, image_path.name)
    refs = talker.reference_videos(options, features.num_frames, {"ref_eyeblink": video_landmarks})
    return features, face, options, refs


def test_ref_eyeblink_feeds_the_reference_expression(talker: SadTalker, motion_inputs) -> None:
    features, face, options, refs = motion_inputs
    assert refs["ref_pose"] is refs["ref_eyeblink"]  # one file: decoded once, as the original reuses it
    plain = talker.predict_motion(features, face, options, 3)
    motion = talker.predict_motion(features, face, options, 3, references={"ref_eyeblink": refs["ref_eyeblink"]})
    # get_data: audio2exp's reference row t is the reference's expression (all 64 columns) of frame t % N
    # (3 reference frames tiled over 8), and the blink ratio is zero.
    np.testing.assert_array_equal(motion.blink_ratio, np.zeros(8, np.float32))
    model = talker.models[256].audio2exp
    mels = torch.from_numpy(features.indiv_mels).unsqueeze(1)
    ref_exp = torch.from_numpy(refs["ref_eyeblink"].coeff_73[[0, 1, 2, 0, 1, 2, 0, 1], :64])
    with torch.inference_mode():
        expected = torch.cat([model(mels[t : t + 1], ref_exp[t : t + 1], torch.zeros(1, 1)) for t in range(8)])
    np.testing.assert_allclose(motion.expression, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(motion.coefficients[:, :64], expected.numpy(), atol=1e-5)
    # Pose is untouched: audio2pose reads the source's pose columns, which ref_eyeblink does not replace.
    np.testing.assert_array_equal(motion.coefficients[:, 64:], plain.coefficients[:, 64:])
    assert np.abs(motion.coefficients[:, :64] - plain.coefficients[:, :64]).max() > 1e-4


def test_ref_pose_adds_the_reference_pose_relative_to_its_first_frame(talker: SadTalker, motion_inputs) -> None:
    features, face, options, refs = motion_inputs
    plain = talker.predict_motion(features, face, options, 3)
    motion = talker.predict_motion(features, face, options, 3, references={"ref_pose": refs["ref_pose"]})
    ref_pose = refs["ref_pose"].coeff_73[:, 64:70]
    offsets = ref_pose[[0, 1, 2, 0, 1, 2, 0, 1]] - ref_pose[0]
    assert np.abs(offsets).max() > 1e-4  # the shifted frames really move the head (translation at least)
    np.testing.assert_allclose(motion.coefficients[:, 64:70], plain.coefficients[:, 64:70] + offsets, atol=1e-6)
    np.testing.assert_array_equal(motion.coefficients[:, :64], plain.coefficients[:, :64])
    # Still mode renders the source's pose instead, so ref_pose changes nothing there (as in the original).
    still = replace(options, still=True)
    a, b = (talker.semantics(m, face, still).target for m in (plain, motion))
    torch.testing.assert_close(a, b)


def test_free_view_angles_drive_every_frame(talker: SadTalker, motion_inputs) -> None:
    features, face, options, _ = motion_inputs
    options = GenerateOptions(enhancer="none", seed=3, input_yaw=[-20, 20], input_pitch=[5])
    motion = talker.predict_motion(features, face, options, 3)
    semantics = talker.semantics(motion, face, options)
    angles = talker.pose_override(options, semantics.num_frames)
    # 8 frames, [-20, 20]: step 40 / 7; arange(-20, 20, 40/7) has 7 values, padded with the 7th.
    step = 40 / 7
    expected_yaw = [-20 + i * step for i in range(7)] + [-20 + 6 * step]
    np.testing.assert_allclose(angles.yaw.numpy(), expected_yaw, atol=1e-5)
    np.testing.assert_array_equal(angles.pitch.numpy(), np.full(8, 5, np.float32))
    assert angles.roll is None
    renderer = talker.renderer(options)
    image = torch.from_numpy(face.crop_image).permute(2, 0, 1).unsqueeze(0).float() / 255
    source = renderer.prepare_source(image, semantics.source)
    driving = renderer.drive(source, semantics.target, angles)
    for t in range(8):  # frame t: predicted roll and translation/expression, requested yaw[t] and pitch 5
        pose = renderer.mapping(semantics.target[t : t + 1])
        kp = transform_keypoints(
            source.kp_canonical, pose, yaw_degrees=torch.tensor([expected_yaw[t]]), pitch_degrees=torch.tensor([5.0])
        )
        torch.testing.assert_close(driving.kp_driving[t : t + 1], kp, atol=1e-5, rtol=0)
    # The render path passes them on: frame 0 from render_frames equals frame 0 rendered with its angles.
    first = next(talker.render_frames(face, semantics, replace(options, batch_size=1), angles))
    override = PoseOverride(yaw=torch.tensor([-20.0]), pitch=torch.tensor([5.0]))
    by_hand = renderer.render_frames(source, renderer.drive(source, semantics.target[:1], override))
    np.testing.assert_array_equal(first[0], (by_hand[0].permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy())


# -- end to end to an mp4, one per feature


@pytest.mark.slow  # one rendered frame each, but face + motion + encode: ~10-60 s per feature on a busy CPU
@pytest.mark.parametrize("feature", ["ref_eyeblink", "ref_pose", "free_view", "extcrop", "extfull"])
def test_each_feature_end_to_end(talker: SadTalker, reference_dir: Path, tmp_path: Path, feature: str) -> None:
    case = FULL_CASE if feature == "extfull" else CROP_CASE
    image_path, landmarks, wav = _case(reference_dir, case)
    audio = _short_wav(wav, tmp_path / "speech.wav", frames=6)
    video, video_landmarks = _reference_video(tmp_path, reference_dir)
    options = {
        "ref_eyeblink": GenerateOptions(ref_eyeblink=video),
        "ref_pose": GenerateOptions(ref_pose=video),
        "free_view": GenerateOptions(input_yaw=[0, 25], input_pitch=[-10], input_roll=[0, 10, -10]),
        "extcrop": GenerateOptions(preprocess="extcrop"),
        "extfull": GenerateOptions(preprocess="extfull", still=True),
    }[feature]
    options = replace(options, enhancer="none", seed=0, max_frames=1)
    out = tmp_path / "out"
    out.mkdir()
    output = talker.generate(
        image_path,
        audio,
        out / "clip.mp4",
        options=options,
        landmarks=landmarks,
        reference_landmarks={feature: video_landmarks},
    )
    info = probe_video(output)
    assert info["frames"] == 1 and info["fps"] == 25
    if feature == "extfull":
        assert (info["width"], info["height"]) == (512, 768)  # pasted back into the whole photo
    else:
        assert (info["width"], info["height"]) == (256, 256)  # the quad of people_0 is square (279 x 279)
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4"]


def test_reference_video_error_in_generate_leaves_nothing(talker: SadTalker, reference_dir: Path, tmp_path: Path):
    image_path, landmarks, wav = _case(reference_dir)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    out.mkdir()
    options = GenerateOptions(enhancer="none", ref_pose=broken)
    with pytest.raises(errors.ReferenceVideoError) as raised:
        talker.generate(image_path, wav, out / "clip.mp4", options=options, landmarks=landmarks)
    assert raised.value.field == "ref_pose"
    assert list(out.iterdir()) == []


# -- conformance runner


@pytest.mark.parametrize("variant", ["references_free_view", "extcrop", "extfull"])
def test_conformance_runner_motion_cases(talker: SadTalker, reference_dir: Path, tmp_path: Path, variant: str) -> None:
    name = FULL_CASE if variant == "extfull" else CROP_CASE
    source = reference_dir / "golden" / name
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    for item in source.iterdir():
        if item.name != "golden.npz":  # a runner never reads goldens
            shutil.copy(item, case_dir / item.name)
    meta = json.loads((source / "case.json").read_text())
    inputs = dict(np.load(source / "inputs.npz"))
    if variant == "references_free_view":
        _, video_landmarks = _reference_video(case_dir, reference_dir, name="blink.mkv")
        meta.update(ref_eyeblink="blink.mkv", ref_pose="blink.mkv", input_yaw=[0, 20], input_roll=[4])
        inputs["ref_video_lm68_orig"] = video_landmarks
    else:
        meta["preprocess"] = variant
    (case_dir / "case.json").write_text(json.dumps(meta))
    np.savez(case_dir / "inputs.npz", **inputs)

    # The session's models as the runner's command line loads them: no face detection, no enhancer.
    runner = copy.copy(talker)
    runner.landmarker, runner.enhancer = None, None
    out = run_case(Case.read(case_dir), runner, frames=1)
    golden = load_golden(source)
    num_frames = golden["coeff_pred_70"].shape[0]
    assert out["coeff_pred_70"].shape == (num_frames, 70)
    assert out["kp_driving_first3"].shape == (3, 15, 3)
    # Driven in a batch of 3 instead of 1: equal up to float rounding.
    np.testing.assert_allclose(out["kp_driving_first3"][:1], out["kp_driving"][:1], atol=1e-5)
    np.testing.assert_array_equal(out["crop_box_xyxy"], golden["crop_box_xyxy"])
    if variant == "references_free_view":
        assert out["ref_video_coeff_73"].shape == (3, 73)
        np.testing.assert_allclose(out["ref_video_coeff_73"][0], golden["source_coeff_73"][0], atol=1e-4)
        np.testing.assert_array_equal(out["blink_ratio"], np.zeros(num_frames, np.float32))
        assert np.abs(out["coeff_pred_70"] - golden["coeff_pred_70"]).max() > 1e-4  # the references act
        assert out["target_semantics"].shape == golden["target_semantics"].shape
    else:
        clx, cly, crx, cry = golden["crop_box_xyxy"]
        image = load_image(case_dir / IMAGES[name])
        np.testing.assert_array_equal(out["crop_image"], cv2.resize(image[cly:cry, clx:crx], (256, 256)))
        assert out["target_semantics"].shape[1] == (73 if variant == "extfull" else 70)
        if variant == "extfull":
            assert out["paste_full_frame0"].shape == image.shape


def test_command_line_flags_are_the_originals() -> None:
    from sadtalker.__main__ import build_parser, options_from_args

    args = build_parser().parse_args(
        [
            "--source_image",
            "face.png",
            "--driven_audio",
            "speech.wav",
            "--ref_eyeblink",
            "blink.mp4",
            "--ref_pose",
            "nod.mp4",
            "--input_yaw",
            "-30",
            "30",
            "--input_pitch",
            "10",
            "--input_roll",
            "0",
            "5",
            "0",
            "--preprocess",
            "extfull",
        ]
    )
    options = options_from_args(args)
    assert (options.ref_eyeblink, options.ref_pose) == (Path("blink.mp4"), Path("nod.mp4"))
    assert (options.input_yaw, options.input_pitch, options.input_roll) == ((-30, 30), (10,), (0, 5, 0))
    assert options.preprocess == "extfull" and options.pastes_back
    plain = options_from_args(build_parser().parse_args(["--source_image", "f.png", "--driven_audio", "s.wav"]))
    assert plain == GenerateOptions(enhancer="none")  # without the new flags: exactly as before


def test_check_reference_video_reads_only_the_header(reference_dir: Path, tmp_path: Path) -> None:
    video, _ = _reference_video(tmp_path, reference_dir, name="ref.mp4", codec="libx264")
    info = check_reference_video(video, field="ref_pose")
    assert info.fps == 25 and info.size_wh == (474, 474) and info.seconds == pytest.approx(0.12, abs=0.01)
    with pytest.raises(errors.ReferenceVideoError, match="limit of 0.05 s") as raised:
        check_reference_video(video, field="ref_pose", max_seconds=0.05)
    assert raised.value.field == "ref_pose"
    with pytest.raises(errors.ReferenceVideoError, match="pixels"):
        check_reference_video(video, max_pixels=1000)
    (tmp_path / "x.webm").write_bytes(b"garbage")
    with pytest.raises(errors.ReferenceVideoError, match="not a readable video"):
        check_reference_video(tmp_path / "x.webm", field="ref_eyeblink")
