"""End to end through ``SadTalker.generate``: files in, an mp4 out whose every decoded frame is checked.

The golden cases render with seed 0, which reproduces the original's recorded randomness, so the first frames of
a generated video must be the golden rendered frames (after the aspect resize, pasted into the photo in full
mode) and, with GFPGAN, those frames enhanced by ``FaceEnhancer`` with the same seed.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers import (
    CROP_CASE,
    FULL_CASE,
    MIN_PSNR_DB,
    assert_video_matches,
    case_inputs,
    decode_frames,
    even_crop,
    frame_psnrs,
    is_output_name,
    leftovers,
    load_golden,
    short_wav,
    write_blind_checkpoints,
)

from sadtalker import errors
from sadtalker.compose.paste import PasteBox, aspect_resize, paste_frame
from sadtalker.contracts import ProgressReport
from sadtalker.face.detect import FaceLandmarker
from sadtalker.media import load_image
from sadtalker.options import GenerateOptions
from sadtalker.pipeline import SadTalker
from sadtalker.video import VideoWriter, probe_video

GOLDEN_FRAMES = 3  # the kit renders 3 frames per case
PRESET_OF = {CROP_CASE: "crop", FULL_CASE: "full"}


def _golden_output_frames(reference_dir: Path, case: str) -> np.ndarray:
    """What the original outputs for the golden frames before the enhancer: aspect resize, then (full) paste.

    The paste of frames 1-2 uses our ``paste_frame``, which test_compose_paste holds to the golden frame 0.
    """
    golden = load_golden(reference_dir / "golden" / case)
    frames = aspect_resize(golden["render_uint8"], tuple(golden["crop_info_size_wh"]))
    if PRESET_OF[case] == "full":
        image = load_image(case_inputs(reference_dir, case)[0])
        box = PasteBox.from_crop(golden["crop_box_xyxy"], golden["quad_lx_ly_rx_ry"])
        frames = np.stack([paste_frame(frame, image, box) for frame in frames])
    return frames


@dataclass(frozen=True)
class Rendered:
    path: Path
    info: dict
    frames: np.ndarray  # every decoded frame, (T, H, W, 3) uint8
    reports: list[ProgressReport]


def _generate(
    talker: SadTalker, reference_dir: Path, case: str, out_dir: Path, enhancer: str, frames: int = GOLDEN_FRAMES
) -> Rendered:
    image, landmarks, wav = case_inputs(reference_dir, case)
    options = GenerateOptions.preset(PRESET_OF[case], enhancer=enhancer, seed=0, max_frames=frames)
    out_dir.mkdir(parents=True)
    work = out_dir.with_name(out_dir.name + "-work")
    work.mkdir()
    reports: list[ProgressReport] = []
    path = talker.generate(
        image, wav, out_dir / "clip.mp4", options=options, landmarks=landmarks, temp_dir=work,
        progress=reports.append,
    )  # fmt: skip
    assert path == out_dir / "clip.mp4"
    assert sorted(p.name for p in out_dir.iterdir()) == ["clip.mp4"]
    assert leftovers(work) == []
    info = probe_video(path)
    return Rendered(path, info, decode_frames(path, info["width"], info["height"]), reports)


@pytest.fixture(scope="module")
def plain_videos(talker: SadTalker, reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each golden case generated without the enhancer (3 frames), with its expected frames."""
    root = tmp_path_factory.mktemp("plain")
    return {
        case: (_generate(talker, reference_dir, case, root / case, "none"), _golden_output_frames(reference_dir, case))
        for case in (CROP_CASE, FULL_CASE)
    }


def _paste_region(reference_dir: Path, case: str, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """Rows and columns of a full-mode frame where the face is pasted (the paste box, clipped to the frame)."""
    golden = load_golden(reference_dir / "golden" / case)
    box = PasteBox.from_crop(golden["crop_box_xyxy"], golden["quad_lx_ly_rx_ry"])
    height, width = shape[-3:-1]
    return slice(max(box.y1, 0), min(box.y2, height)), slice(max(box.x1, 0), min(box.x2, width))


@pytest.mark.parametrize("case", [CROP_CASE, FULL_CASE])
def test_every_decoded_frame_is_the_golden_frame(plain_videos: dict, reference_dir: Path, case: str) -> None:
    rendered, expected = plain_videos[case]
    info = rendered.info
    assert (info["video_codec"], info["audio_codec"], info["pix_fmt"], info["fps"]) == ("h264", "aac", "yuv420p", 25)
    assert info["frames"] == GOLDEN_FRAMES == len(rendered.frames)
    expected = even_crop(expected)
    assert_video_matches(rendered.frames, expected)
    if PRESET_OF[case] == "full":
        # The photo around the face is static: with frames 0 and 1 swapped the whole frame still scored 31 dB
        # luma, so the pasted face is also held to the floor on its own (measured 35.5-40 dB).
        assert_video_matches(rendered.frames, expected, region=_paste_region(reference_dir, case, expected.shape))


# GFPGAN runs twice per frame here (the video and the expectation), ~5 s per 512 crop frame and ~15 s per full-size
# one (1024x1536: detection, restore, parse-mask paste).  Frame order is NOT what these catch: with the synthetic
# GFPGAN, neighbouring enhanced frames look alike (frames 0 and 1 swapped still scored 35-42 dB), so order and
# frozen frames are held by the plain videos above (every frame; a reversed render fails there at 16-28 dB).
# These check what the enhancer adds: the crop preset on 2 frames (GFPGAN's noise stream continues across render
# batches, as in one call), the full preset on its first frame (enhanced after the paste, at twice the photo size).
@pytest.mark.parametrize(("case", "frames", "size_wh"), [(CROP_CASE, 2, (512, 512)), (FULL_CASE, 1, (1024, 1536))])
def test_preset_end_to_end_frames_are_the_enhanced_golden_frames(
    talker: SadTalker, reference_dir: Path, tmp_path: Path, case: str, frames: int, size_wh: tuple[int, int]
) -> None:
    """The preset as users get it (GFPGAN, upscale 2): every frame is FaceEnhancer(golden frames, same seed)."""
    rendered = _generate(talker, reference_dir, case, tmp_path / "out", "gfpgan", frames)
    info = rendered.info
    assert (info["video_codec"], info["audio_codec"], info["pix_fmt"], info["fps"]) == ("h264", "aac", "yuv420p", 25)
    assert info["frames"] == frames
    # GFPGAN pastes back at twice the size, as the original's GFPGANer(upscale=2).
    assert (info["width"], info["height"]) == size_wh
    fractions = [report.fraction for report in rendered.reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert [report.stage for report in rendered.reports][:4] == ["inputs", "face", "motion", "render"]
    # Frames are reported as the encoder writes them, one batch (one frame on CPU) at a time.
    written = sorted({report.frames_written for report in rendered.reports})
    assert written == list(range(frames + 1)) and rendered.reports[-1].frames_total == frames

    golden = _golden_output_frames(reference_dir, case)[:frames]
    expected = talker.enhancer.enhance(golden, generator=torch.Generator().manual_seed(0))
    assert_video_matches(rendered.frames, even_crop(expected))


def _encode(frames: np.ndarray, path: Path) -> np.ndarray:
    with VideoWriter(path, audio=None) as writer:
        writer.write(frames)
    return decode_frames(path, frames.shape[2] // 2 * 2, frames.shape[1] // 2 * 2)


def test_video_comparison_rejects_broken_videos(plain_videos: dict, tmp_path: Path) -> None:
    """The comparison above is the unit under test: broken renders, encoded like a real one, must fail it."""
    rendered, expected = plain_videos[CROP_CASE]
    expected = even_crop(expected)
    good = rendered.frames
    assert_video_matches(good, expected)  # the real video passes (so failures below are the breakage's)
    broken = {
        "black frame 1": np.concatenate([good[:1], np.zeros_like(good[:1]), good[2:]]),
        "frozen on frame 0": np.repeat(good[:1], len(good), axis=0),
        "frames 1 and 2 swapped": good[[0, 2, 1]],
        "shifted 2 px right": np.roll(good, 2, axis=2),
        "one frame dropped": good[[0, 2]],
    }
    for name, frames in broken.items():
        decoded = _encode(frames, tmp_path / f"{name.replace(' ', '_')}.mp4")
        with pytest.raises(AssertionError):
            assert_video_matches(decoded, expected)
        if decoded.shape == expected.shape:
            worst = min(min(pair) for pair in frame_psnrs(decoded, expected))
            print(f"{name}: worst frame {worst:.1f} dB (floor {MIN_PSNR_DB})")


def test_input_errors_are_typed_and_leave_nothing(talker: SadTalker, reference_dir: Path, tmp_path: Path) -> None:
    image, landmarks, wav = case_inputs(reference_dir, CROP_CASE)
    out = tmp_path / "out"
    out.mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    tiny = tmp_path / "tiny.wav"
    soundfile.write(tiny, np.zeros(300, np.int16), 16000)
    cases = [
        (dict(source_image=broken, driven_audio=wav), errors.ImageError, "source_image"),
        (dict(source_image=text, driven_audio=wav), errors.ImageError, "source_image"),
        (dict(source_image=image, driven_audio=text), errors.AudioError, "driven_audio"),
        (dict(source_image=image, driven_audio=tiny), errors.AudioTooShortError, "driven_audio"),
    ]
    for kwargs, error, field in cases:
        with pytest.raises(error) as raised:
            talker.generate(**kwargs, output_path=out / "x.mp4", preset="crop", landmarks=landmarks)
        assert raised.value.field == field
        assert str(raised.value)
    capped = SadTalker.__new__(SadTalker)
    capped.__dict__.update(talker.__dict__, max_audio_seconds=1.0)
    with pytest.raises(errors.AudioTooLongError, match="1"):
        capped.generate(image, wav, out / "x.mp4", preset="crop", landmarks=landmarks)
    with pytest.raises(errors.InputError) as raised:
        talker.generate(image, wav, out / "x.mp4", preset="crop", landmarks=landmarks[:10])
    assert raised.value.field == "landmarks"
    assert list(out.iterdir()) == []


def _replaying_golden_frames(talker: SadTalker, reference_dir: Path) -> SadTalker:
    """The session's models with the render replaced by the crop case's golden rendered frames, batch by batch.

    For tests whose subject is not the render (the command line, clean-up after a failure): a rendered frame
    costs ~4 s here, and test_every_decoded_frame_is_the_golden_frame holds the real render to these frames.
    Everything else of ``generate`` (inputs, face, motion, compose, encode, rename) runs for real.
    """
    golden = load_golden(reference_dir / "golden" / CROP_CASE)["render_uint8"]
    replay = copy.copy(talker)

    def render_frames(face, semantics, options, angles=None):  # the signature of SadTalker.render_frames
        assert semantics.num_frames <= len(golden), "the kit renders 3 frames; use a shorter clip"
        batch = replay.render_batch(options)
        for start in range(0, semantics.num_frames, batch):
            yield golden[start : min(start + batch, semantics.num_frames)]

    replay.render_frames = render_frames  # type: ignore[method-assign]
    return replay


def test_failure_mid_render_leaves_no_files(
    talker: SadTalker, reference_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, landmarks, wav = case_inputs(reference_dir, CROP_CASE)
    audio = short_wav(wav, tmp_path / "speech.wav", frames=2)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    original = SadTalker.compose
    calls = {"n": 0}

    def failing_compose(self, frames, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # after one batch was already encoded
            raise RuntimeError("injected failure")
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(SadTalker, "compose", failing_compose)
    options = GenerateOptions.preset("crop", enhancer="none", batch_size=1)
    replay = _replaying_golden_frames(talker, reference_dir)
    with pytest.raises(RuntimeError, match="injected failure"):
        replay.generate(image, audio, out / "clip.mp4", options=options, landmarks=landmarks, temp_dir=work)
    assert calls["n"] == 2
    assert list(out.iterdir()) == []
    assert leftovers(work) == []


def test_no_face_is_reported_by_the_real_detector(
    talker: SadTalker, synthetic_checkpoints: Path, reference_dir: Path, tmp_path: Path
) -> None:
    """RetinaFace finds nothing (a detector whose classifier always says "background"): a typed, useful error."""
    image, _, wav = case_inputs(reference_dir, CROP_CASE)
    blind = copy.copy(talker)  # the session's models, with a landmarker that sees no face
    blind.landmarker = FaceLandmarker(write_blind_checkpoints(synthetic_checkpoints, tmp_path / "ckpt"), "cpu")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.NoFaceError) as raised:
        blind.generate(image, wav, out / "x.mp4", preset="crop")
    assert raised.value.field == "source_image"
    assert str(raised.value) == "no face found in people_0.png; use a clear frontal photo or pass landmarks"
    assert list(out.iterdir()) == []


def test_command_line_renders_into_result_dir(
    talker: SadTalker,
    synthetic_checkpoints: Path,
    reference_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sadtalker.pipeline
    from sadtalker.__main__ import main

    loads: list[tuple] = []
    replay = _replaying_golden_frames(talker, reference_dir)

    def shared_talker(checkpoint_dir, device, **kwargs) -> SadTalker:
        """The session's models instead of a second ~25 s load; the arguments the CLI passes are checked."""
        loads.append((Path(checkpoint_dir), device, kwargs))
        return replay

    monkeypatch.setattr(sadtalker.pipeline, "SadTalker", shared_talker)
    image, landmarks, wav = case_inputs(reference_dir, CROP_CASE)
    audio = short_wav(wav, tmp_path / "speech.wav", frames=2)
    np.save(tmp_path / "landmarks.npy", landmarks)
    code = main(
        [
            "--source_image",
            str(image),
            "--driven_audio",
            str(audio),
            "--result_dir",
            str(tmp_path / "results"),
            "--checkpoint_dir",
            str(synthetic_checkpoints),
            "--landmarks",
            str(tmp_path / "landmarks.npy"),
            "--preprocess",
            "crop",
            "--enhancer",
            "none",
            "--seed",
            "0",
            "--cpu",
            "--no_compile",
        ]
    )
    assert code == 0
    expected = {"sizes": (256,), "enhancer": False, "face_detection": False, "precision": "exact", "compile": False}
    assert loads == [(synthetic_checkpoints, "cpu", expected)]
    output = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert output.parent == tmp_path / "results" and is_output_name(output.name)
    assert probe_video(output)["frames"] == 2
    assert main(["--source_image", str(image), "--driven_audio", str(audio), "--landmarks", str(audio)]) == 2


def test_stop_requested_after_the_first_frame_ends_generate_within_one_frame(
    talker: SadTalker, reference_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop (the progress callback raising) requested once the first frame is written interrupts the render,
    the enhancer and the encoder within one frame: at most one more unit of work (a frame rendered, or a face
    detected or restored) begins after the request, and no file is left."""
    image, landmarks, wav = case_inputs(reference_dir, CROP_CASE)
    audio = short_wav(wav, tmp_path / "speech.wav", frames=5)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    options = GenerateOptions.preset("crop", enhancer="gfpgan", seed=0, batch_size=1)
    stop = threading.Event()
    after_stop = {"rendered": 0, "aligned": 0, "restored": 0}
    done = {"rendered": 0}

    def counted(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            if stop.is_set():
                after_stop[name] += 1
            result = fn(*args, **kwargs)
            done[name] = done.get(name, 0) + 1
            return result

        return wrapper

    renderer, enhancer = talker.renderer(options), talker.enhancer
    assert enhancer is not None
    monkeypatch.setattr(renderer, "render_frames", counted("rendered", renderer.render_frames))
    monkeypatch.setattr(enhancer, "_align", counted("aligned", enhancer._align))
    gfpgan_fn = enhancer._gfpgan_fn
    monkeypatch.setattr(enhancer, "_gfpgan_fn", lambda *args, **kwargs: counted("restored", gfpgan_fn(*args, **kwargs)))

    class StopRequested(Exception):
        pass

    reports: list[ProgressReport] = []

    def progress(report: ProgressReport) -> None:
        reports.append(report)
        if stop.is_set():
            raise StopRequested
        if report.frames_written >= 1:
            stop.set()

    with pytest.raises(StopRequested):
        talker.generate(
            image, audio, out / "clip.mp4", options=options, landmarks=landmarks, temp_dir=work, progress=progress
        )
    assert stop.is_set() and reports[-1].frames_total == 5
    print(f"units of work begun after the stop: {after_stop}; done in all: {done}")
    # Every unit (a frame's render, a frame's face detection, a face's GFPGAN pass) is preceded by a stop check:
    # only one begun between the last check and the stop request can run; the next check raises.
    assert sum(after_stop.values()) <= 1
    assert done["rendered"] <= 2  # of 5
    assert list(out.iterdir()) == []
    assert leftovers(work) == []
