"""Fast unit tests of the motion stage on small random-weight models (no checkpoint file needed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sadtalker.audio import AudioFeatures
from sadtalker.conformance import motion_arrays
from sadtalker.errors import InputError
from sadtalker.motion import (
    Audio2ExpNet,
    Audio2PoseNet,
    draw_pose_noise,
    generate_blink_ratio,
    num_pose_chunks,
    predict_expression,
    predict_motion,
    smooth_pose,
)
from sadtalker.motion.audio2pose import PoseChunkSchedule, _PoseDiscriminatorLayout, _PoseEncoderLayout
from sadtalker.motion.blink import BLINK_SHAPE
from sadtalker.motion.coefficients import savgol_window
from sadtalker.weights import CheckpointError


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Deterministic small random weights (BatchNorm variances kept positive), without the global RNG."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            values = torch.randn(tensor.shape, generator=generator)
            tensor.copy_(1 + 0.1 * values.abs() if name.endswith("running_var") else 0.1 * values)
    return module.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def models() -> tuple[Audio2ExpNet, Audio2PoseNet]:
    return _randomise(Audio2ExpNet(), 1), _randomise(Audio2PoseNet(), 2)  # type: ignore[return-value]


def _features(num_frames: int, seed: int = 0) -> AudioFeatures:
    rng = np.random.default_rng(seed)
    windows = rng.uniform(-4, 4, size=(num_frames, 80, 16)).astype(np.float32)
    return AudioFeatures(
        num_frames=num_frames,
        wav=np.zeros(num_frames * 640, np.float32),
        mel=np.zeros((num_frames * 16 // 5 + 1, 80), np.float32),
        indiv_mels=windows,
    )


SOURCE = np.linspace(-0.5, 0.5, 73, dtype=np.float32)


def _fake_checkpoint() -> dict[str, torch.Tensor]:
    """A SadTalker-style flat dict with the audio2exp./audio2pose. prefixes, including training-only parts."""
    parts = {
        "audio2exp.": _randomise(Audio2ExpNet(), 3),
        "audio2pose.": _randomise(Audio2PoseNet(), 4),
        "audio2pose.netG.encoder.": _PoseEncoderLayout(),
        "audio2pose.netD_motion.": _PoseDiscriminatorLayout(),
        "generator.": nn.Linear(2, 2),  # other prefixes must be ignored
    }
    checkpoint: dict[str, torch.Tensor] = {}
    for prefix, module in parts.items():
        checkpoint.update({prefix + key: value.clone() for key, value in module.state_dict().items()})
    return checkpoint


# ---------------------------------------------------------------- blink


@pytest.mark.parametrize("make_rng", [lambda seed: random.Random(seed), np.random.default_rng])
def test_blink_is_deterministic_for_a_seed(make_rng) -> None:
    first, again = generate_blink_ratio(300, make_rng(7)), generate_blink_ratio(300, make_rng(7))
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and first.shape == (300,)
    assert not np.array_equal(first, generate_blink_ratio(300, make_rng(8)))


@pytest.mark.parametrize("num_frames", [22, 60, 70, 141, 1000])
def test_blink_schedule_shape(num_frames: int) -> None:
    ratio = generate_blink_ratio(num_frames, random.Random(num_frames))
    starts = [i for i in range(num_frames) if ratio[i] == 0.5 and (i == 0 or ratio[i - 1] == 0)]
    assert starts, "a clip of more than 21 frames blinks at least once"
    previous_end = 0
    for start in starts:
        np.testing.assert_array_equal(ratio[start : start + 5], BLINK_SHAPE)
        assert 10 <= start - previous_end < min(num_frames // 2, 70)
        assert start + 5 <= num_frames - 1
        previous_end = start + 5
    assert np.count_nonzero(ratio) == 5 * len(starts)


@pytest.mark.parametrize("num_frames", [0, 1, 20, 21])
def test_short_clips_do_not_blink(num_frames: int) -> None:
    # 21 frames: upstream's random.choice gets an empty range and raises; we return no blinks.
    np.testing.assert_array_equal(generate_blink_ratio(num_frames, random.Random(0)), np.zeros(num_frames))


# ---------------------------------------------------------------- pose chunks and noise


@pytest.mark.parametrize(("frames", "chunks"), [(1, 0), (2, 1), (33, 1), (34, 2), (60, 2), (65, 2), (66, 3), (70, 3)])
def test_num_pose_chunks(frames: int, chunks: int) -> None:
    assert num_pose_chunks(frames) == chunks


def test_chunk_windows_follow_upstream() -> None:
    schedule = PoseChunkSchedule(70)  # 69 moving frames = 2 full chunks + remainder 5
    assert (schedule.full_chunks, schedule.remainder) == (2, 5)
    assert schedule.window_frames(0) == list(range(1, 33))
    assert schedule.window_frames(1) == list(range(33, 65))
    assert schedule.window_frames(2) == list(range(38, 70))  # the last 32 frames
    # Shorter than one chunk: upstream cannot run; we repeat frame 1's window in front.
    assert PoseChunkSchedule(5).window_frames(0) == [1] * 28 + [1, 2, 3, 4]


def test_drawn_noise_shape_and_determinism() -> None:
    noise = draw_pose_noise(70, torch.Generator().manual_seed(3))
    assert noise.shape == (3, 64) and noise.dtype == torch.float32
    torch.testing.assert_close(noise, draw_pose_noise(70, torch.Generator().manual_seed(3)), rtol=0, atol=0)
    assert draw_pose_noise(1, torch.Generator()).shape == (0, 64)


def test_injected_noise_equals_generator_noise(models: tuple[Audio2ExpNet, Audio2PoseNet]) -> None:
    audio2exp, audio2pose = models
    features = _features(40)
    common = {"pose_style": 5, "audio2exp": audio2exp, "audio2pose": audio2pose, "blink_rng": random.Random(1)}
    drawn = predict_motion(features, SOURCE, generator=torch.Generator().manual_seed(11), **common)
    assert drawn.pose_noise.shape == (2, 64)
    as_list = [row for row in drawn.pose_noise]  # per-chunk vectors
    common["blink_rng"] = random.Random(1)
    injected = predict_motion(features, SOURCE, pose_noise=as_list, **common)
    np.testing.assert_array_equal(injected.coefficients, drawn.coefficients)
    np.testing.assert_array_equal(injected.blink_ratio, drawn.blink_ratio)


def test_wrong_noise_or_missing_randomness_raise(models: tuple[Audio2ExpNet, Audio2PoseNet]) -> None:
    audio2exp, audio2pose = models
    features = _features(40)
    kwargs = {"pose_style": 0, "audio2exp": audio2exp, "audio2pose": audio2pose}
    with pytest.raises(ValueError, match=r"\(2, 64\)"):
        predict_motion(features, SOURCE, blink_ratio=np.zeros(40), pose_noise=np.zeros((3, 64)), **kwargs)
    with pytest.raises(ValueError, match="generator"):
        predict_motion(features, SOURCE, blink_ratio=np.zeros(40), **kwargs)
    with pytest.raises(ValueError, match="blink"):
        predict_motion(features, SOURCE, generator=torch.Generator(), **kwargs)
    with pytest.raises(ValueError, match="40 values"):
        predict_motion(features, SOURCE, blink_ratio=np.zeros(39), generator=torch.Generator(), **kwargs)


@pytest.mark.parametrize("style", [-1, 46, 1.0, True])
def test_pose_style_is_validated(style, models: tuple[Audio2ExpNet, Audio2PoseNet]) -> None:
    audio2exp, audio2pose = models
    with pytest.raises(InputError) as info:
        predict_motion(
            _features(5),
            SOURCE,
            pose_style=style,
            still=True,
            generator=torch.Generator(),
            audio2exp=audio2exp,
            audio2pose=audio2pose,
        )
    assert info.value.field == "pose_style"


# ---------------------------------------------------------------- assembly


@pytest.mark.parametrize("num_frames", [1, 2, 3, 12, 33, 45])
def test_predict_motion_any_length(num_frames: int, models: tuple[Audio2ExpNet, Audio2PoseNet]) -> None:
    audio2exp, audio2pose = models
    result = predict_motion(
        _features(num_frames),
        SOURCE[None, :],
        pose_style=45,
        still=True,
        generator=torch.Generator().manual_seed(0),
        audio2exp=audio2exp,
        audio2pose=audio2pose,
    )
    assert result.num_frames == num_frames
    assert result.coefficients.shape == (num_frames, 70) and result.coefficients.dtype == np.float32
    assert np.all(np.isfinite(result.coefficients))
    np.testing.assert_array_equal(result.blink_ratio, np.zeros(num_frames))  # still: no blinks
    np.testing.assert_array_equal(result.pose_motion[0], np.zeros(6))  # the reference frame does not move
    np.testing.assert_array_equal(result.pose_raw[0], SOURCE[64:70])
    np.testing.assert_array_equal(result.coefficients[:, :64], result.expression)
    np.testing.assert_array_equal(result.coefficients[:, 64:], result.pose_smoothed)
    chunks = num_pose_chunks(num_frames)
    assert result.pose_audio_embedding.shape == (chunks, 32, 512)
    assert result.pose_chunk_motion.shape == (chunks, 32, 6)
    assert set(motion_arrays(result)) >= {"audio2exp_exp_64", "audio2pose_z", "coeff_pred_70"}


def test_explicit_blink_ratio_is_used_verbatim_even_when_still(models: tuple[Audio2ExpNet, Audio2PoseNet]) -> None:
    audio2exp, audio2pose = models
    ratio = generate_blink_ratio(40, random.Random(2))
    result = predict_motion(
        _features(40),
        SOURCE,
        pose_style=0,
        still=True,
        blink_ratio=ratio,
        generator=torch.Generator(),
        audio2exp=audio2exp,
        audio2pose=audio2pose,
    )
    np.testing.assert_array_equal(result.blink_ratio, ratio)


def test_expression_chunks_equal_one_batch(models: tuple[Audio2ExpNet, Audio2PoseNet]) -> None:
    """Frames are independent, so 10-frame chunking only bounds memory."""
    audio2exp, _ = models
    mels = torch.from_numpy(_features(23).indiv_mels)
    ref, ratio = torch.linspace(-1, 1, 64), torch.linspace(0, 1, 23)
    chunked = predict_expression(audio2exp, mels, ref, ratio)
    with torch.inference_mode():
        whole = audio2exp(mels.unsqueeze(1), ref.expand(23, 64), ratio[:, None])
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("frames", "window"), [(1, 1), (2, 1), (3, 3), (4, 3), (12, 11), (13, 13), (500, 13)])
def test_savgol_window(frames: int, window: int) -> None:
    assert savgol_window(frames) == window


def test_smooth_pose_keeps_quadratics_and_short_tracks() -> None:
    t = np.arange(40, dtype=np.float32)[:, None]
    quadratic = (0.01 * t**2 - 0.3 * t + 1).repeat(6, axis=1).astype(np.float32)
    np.testing.assert_allclose(smooth_pose(quadratic), quadratic, atol=1e-4)  # an order-2 fit is exact
    short = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(smooth_pose(short), short)
    noisy = np.random.default_rng(1).standard_normal((40, 6)).astype(np.float32)
    assert smooth_pose(noisy).std() < noisy.std()


# ---------------------------------------------------------------- checkpoint loading


def test_from_checkpoint_loads_strictly() -> None:
    checkpoint = _fake_checkpoint()
    audio2exp = Audio2ExpNet.from_checkpoint(checkpoint)
    audio2pose = Audio2PoseNet.from_checkpoint(checkpoint)
    torch.testing.assert_close(audio2exp.mapping1.weight, checkpoint["audio2exp.mapping1.weight"], rtol=0, atol=0)
    key = "audio2pose.netG.decoder.classbias"
    torch.testing.assert_close(audio2pose.netG.decoder.classbias, checkpoint[key], rtol=0, atol=0)
    assert not audio2exp.training and not audio2pose.training
    assert not any(p.requires_grad for p in audio2pose.parameters())
    assert not hasattr(audio2pose, "netD_motion") and not hasattr(audio2pose.netG, "encoder")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("audio2pose.netD_motion.seq.3.bias"), "netD_motion"),
        (lambda c: c.pop("audio2pose.netG.encoder.linear_logvar.weight"), "linear_logvar"),
        (lambda c: c.update({"audio2pose.netG.decoder.pose_linear.weight": torch.zeros(6, 7)}), "pose_linear"),
        (lambda c: c.update({"audio2pose.netG.decoder.extra": torch.zeros(1)}), "extra"),
    ],
)
def test_from_checkpoint_rejects_bad_files(mutate, message: str) -> None:
    checkpoint = _fake_checkpoint()
    mutate(checkpoint)
    with pytest.raises(CheckpointError, match=message):
        Audio2PoseNet.from_checkpoint(checkpoint)


def test_audio2exp_rejects_missing_tensors() -> None:
    checkpoint = _fake_checkpoint()
    del checkpoint["audio2exp.audio_encoder.12.conv_block.1.running_var"]
    with pytest.raises(CheckpointError, match=r"audio2exp\..*running_var"):
        Audio2ExpNet.from_checkpoint(checkpoint)


def test_key_sets_match_the_official_layout(reference_dir: Path) -> None:
    """Our modules (plus the validated training-only layouts) hold exactly the official tensors."""
    layout = json.loads((reference_dir / "checkpoint_layout.json").read_text())
    official = {
        entry["key"]: tuple(entry["shape"])
        for entry in layout["files"]["SadTalker_V0.0.2_256.safetensors"]["tensors"]
        if entry["key"].startswith(("audio2exp.", "audio2pose."))
    }
    ours = {key: tuple(value.shape) for key, value in _fake_checkpoint().items() if not key.startswith("generator.")}
    assert ours == official
    assert sum(k.startswith("audio2exp.") for k in official) == 93
    assert sum(k.startswith("audio2pose.") for k in official) == 419
