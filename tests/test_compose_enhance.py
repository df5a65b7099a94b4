"""GFPGAN face enhancer: offline strict loading, and equality with the original's GFPGANer on injected faces.

Random (synthetic) weights make RetinaFace "detect" hundreds of junk faces per frame, and a 512 GFPGAN pass costs
~10 s on this CPU; so faces are injected (landmarks), and the fast tests swap in a narrow GFPGANv1Clean (same
architecture class, 1/16 of the channels) and a narrow ParseNet on BOTH sides of the comparison; the full-size
networks are compared once in a test marked slow.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from facexlib.parsing.parsenet import ParseNet
from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean

from sadtalker.compose.enhance import FaceEnhancer, decoder_noise, gfpgan_forward, largest_faces
from sadtalker.weights import CheckpointError

# GFPGANer builds RetinaFace through torchvision's deprecated resnet50(pretrained=False) call.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torchvision")

# FFHQ 5-point template at 512 (facexlib's), used to place an injected face in a frame.
TEMPLATE = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043],
     [313.08905, 371.15118]]
)  # fmt: skip


def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    _block_network(monkeypatch)


@pytest.fixture(scope="module")
def enhancer(synthetic_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> FaceEnhancer:
    """Built offline in an empty working directory: nothing may be fetched, or resolved against / written to it."""
    workdir = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        _block_network(patch)
        patch.chdir(workdir)
        enhancer = FaceEnhancer(synthetic_checkpoints, "cpu", batch_size=2)
    assert list(workdir.iterdir()) == []
    return enhancer


def _narrow_gfpgan(seed: int = 0, size: int = 512) -> GFPGANv1Clean:
    """A cheap GFPGANv1Clean (1/16 of the channels) with noise strengths large enough to matter."""
    torch.manual_seed(seed)
    net = GFPGANv1Clean(
        out_size=size,
        num_style_feat=32,
        channel_multiplier=1,
        decoder_load_path=None,
        fix_decoder=False,
        num_mlp=2,
        input_is_latent=True,
        different_w=True,
        narrow=1 / 16,
        sft_half=True,
    )
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith(".weight") and param.numel() == 1:  # NoiseInjection strengths (zero at init)
                param.fill_(0.3)
    return net.eval()


def _narrow_parser(seed: int = 0) -> ParseNet:
    """A cheap ParseNet (512 in/out, 19 classes, few channels): the real one costs ~10 s per face here."""
    torch.manual_seed(seed)
    return ParseNet(in_size=512, out_size=512, parsing_ch=19, base_ch=8, res_depth=1, ch_range=[8, 16]).eval()


def _frames() -> tuple[np.ndarray, list[np.ndarray]]:
    """Two 256x256 RGB frames (a smooth texture) and one injected face's 5 landmarks per frame (float32)."""
    rng = np.random.default_rng(0)
    frames = np.stack([cv2.resize(rng.integers(0, 256, (16, 16, 3), np.uint8), (256, 256)) for _ in range(2)])
    landmarks = [(TEMPLATE * scale + offset).astype(np.float32) for scale, offset in [(0.4, (20, 25)), (0.3, (60, 40))]]
    return frames, landmarks


def test_missing_weights_fail_fast_offline(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(CheckpointError, match="GFPGANv1.4.pth, parsing_parsenet.pth, detection_Resnet50_Final.pth"):
        FaceEnhancer(tmp_path)


def test_loads_offline_and_frames_without_faces_come_back_unchanged(enhancer: FaceEnhancer) -> None:
    frames, _ = _frames()
    out = enhancer.enhance(frames[:, :200, :150], landmarks=[[], []])  # no face in either frame
    assert out.shape == (2, 200, 150, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, frames[:, :200, :150])
    # The original's upscale=2: the frame comes back twice as large, Lanczos-resized (GFPGANer without faces).
    enhancer.helper.set_upscale_factor(2)
    try:
        doubled = enhancer.enhance(frames[:1, :200, :150], landmarks=[[]])
    finally:
        enhancer.helper.set_upscale_factor(1)
    assert doubled.shape == (1, 400, 300, 3)
    np.testing.assert_array_equal(
        doubled[0], cv2.resize(frames[0, :200, :150], (300, 400), interpolation=cv2.INTER_LANCZOS4)
    )


def test_decoder_noise_reproduces_the_library_forward() -> None:
    """Our batched forward == GFPGANv1Clean.forward, with stored noise and with seeded per-face noise."""
    net = _narrow_gfpgan(size=128)
    faces = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        stored = net(faces, return_rgb=False, randomize_noise=False)[0]
        torch.testing.assert_close(gfpgan_forward(net, faces, None), stored, rtol=0, atol=0)
        # GFPGANer: one face per call, noise from the global RNG.
        torch.manual_seed(123)
        sequential = torch.cat([net(faces[i : i + 1], return_rgb=False)[0] for i in range(2)])
        batched = gfpgan_forward(net, faces, decoder_noise(net, 2, torch.Generator().manual_seed(123)))
        other_seed = gfpgan_forward(net, faces, decoder_noise(net, 2, torch.Generator().manual_seed(124)))
    err = (batched - sequential).abs()
    print(f"batched vs sequential forward: max abs {err.max():.2e}, mean abs {err.mean():.2e}")
    assert err.max() < 1e-4
    assert (other_seed - sequential).abs().max() > 0.1  # the noise really matters at these strengths


def _gfpganer(
    checkpoints: Path,
    workdir: Path,
    landmarks: list[np.ndarray],
    net: GFPGANv1Clean | None = None,
    parser: ParseNet | None = None,
):
    """The original's GFPGANer(upscale=1) reading weights from workdir/gfpgan/weights, with faces injected."""
    from gfpgan import GFPGANer

    weights = workdir / "gfpgan" / "weights"
    weights.mkdir(parents=True)
    for name in ("detection_Resnet50_Final.pth", "parsing_parsenet.pth"):
        (weights / name).symlink_to(checkpoints / name)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        restorer = GFPGANer(
            model_path=str(checkpoints / "GFPGANv1.4.pth"),
            upscale=1,
            arch="clean",
            channel_multiplier=2,
            bg_upsampler=None,
            device=torch.device("cpu"),
        )
    finally:
        os.chdir(cwd)
    if net is not None:
        restorer.gfpgan = net
    if parser is not None:
        restorer.face_helper.face_parse = parser
    queue = list(landmarks)

    def detect_faces(image: np.ndarray, conf_threshold: float = 0.8) -> np.ndarray:
        points = queue.pop(0)  # one injected face per call, in frame order
        box = [*points.min(axis=0) - 20, *points.max(axis=0) + 20, 0.999]
        return np.concatenate([np.float32(box), points.ravel()])[None].astype(np.float32)

    restorer.face_helper.face_det.detect_faces = detect_faces
    return restorer


def _compare_with_gfpganer(
    enhancer: FaceEnhancer, restorer, frames: np.ndarray, landmarks: list[np.ndarray], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    expected = np.stack(
        [cv2.cvtColor(restorer.enhance(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[2], cv2.COLOR_BGR2RGB) for f in frames]
    )
    got = enhancer.enhance(frames, landmarks=[[lm] for lm in landmarks], generator=torch.Generator().manual_seed(seed))
    return got, expected


def _report(got: np.ndarray, expected: np.ndarray, frames: np.ndarray) -> np.ndarray:
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    changed = np.abs(expected.astype(np.int16) - frames).max(axis=-1) > 0
    print(
        f"enhance vs GFPGANer: max abs {diff.max()} levels, mean abs {diff.mean():.2e}, "
        f"exact {np.mean(diff == 0):.5f}; face pixels changed {changed.mean():.3f}"
    )
    return diff


def test_matches_gfpganer_with_injected_faces(
    enhancer: FaceEnhancer, synthetic_checkpoints: Path, tmp_path: Path, no_network: None
) -> None:
    """Detection injected, narrow nets on both sides: alignment, batched restore, parse-mask paste-back."""
    frames, landmarks = _frames()
    net, parser = _narrow_gfpgan(), _narrow_parser()
    restorer = _gfpganer(synthetic_checkpoints, tmp_path, landmarks, net, parser)
    original_net, original_parser = enhancer.gfpgan, enhancer.helper.face_parse
    enhancer.gfpgan, enhancer.helper.face_parse = net, parser
    try:
        got, expected = _compare_with_gfpganer(enhancer, restorer, frames, landmarks, seed=5)
    finally:
        enhancer.gfpgan, enhancer.helper.face_parse = original_net, original_parser
    assert got.shape == expected.shape == frames.shape
    diff = _report(got, expected, frames)
    assert np.abs(expected.astype(np.int16) - frames).max() > 20  # a face was really restored and pasted
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.999


@pytest.mark.slow
def test_matches_gfpganer_with_the_real_architecture(
    enhancer: FaceEnhancer, synthetic_checkpoints: Path, tmp_path: Path, no_network: None
) -> None:
    """Same, with the full-size GFPGANv1.4 and ParseNet from the synthetic checkpoints (~30 s per face here)."""
    frames, landmarks = _frames()
    restorer = _gfpganer(synthetic_checkpoints, tmp_path, landmarks[:1])
    got, expected = _compare_with_gfpganer(enhancer, restorer, frames[:1], landmarks[:1], seed=11)
    diff = _report(got, expected, frames[:1])
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.999


def test_restore_batches_are_invisible(enhancer: FaceEnhancer) -> None:
    """2 faces in batches of 1 == 2 faces in one batch (noise is drawn face by face)."""
    net = _narrow_gfpgan(seed=3)
    original_net, original_batch = enhancer.gfpgan, enhancer.face_batch
    crops = [np.random.default_rng(i).integers(0, 256, (512, 512, 3), np.uint8) for i in range(2)]
    try:
        enhancer.gfpgan = net
        enhancer.face_batch = 1
        split = enhancer.restore_faces(crops, generator=torch.Generator().manual_seed(9))
        enhancer.face_batch = 2
        whole = enhancer.restore_faces(crops, generator=torch.Generator().manual_seed(9))
    finally:
        enhancer.gfpgan, enhancer.face_batch = original_net, original_batch
    for a, b in zip(split, whole, strict=True):
        assert a.shape == (512, 512, 3) and a.dtype == np.uint8
        assert np.abs(a.astype(np.int16) - b).max() <= 1


@pytest.fixture(autouse=True)
def _few_threads() -> Iterator[None]:
    """The machine is shared: keep this module's torch work on 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


def test_largest_faces_by_box_area() -> None:
    boxes = [
        np.array([0, 0, 10, 10, 0.999]),  # 100 px², the most confident
        np.array([5, 5, 35, 25, 0.98]),  # 600 px²
        np.array([50, 50, 70, 80, 0.97]),  # 600 px², later: after the equal one
        np.array([0, 0, 20, 20, 0.99]),  # 400 px²
    ]
    assert largest_faces(boxes, 1) == [1]
    assert largest_faces(boxes, 3) == [1, 2, 3]
    assert largest_faces(boxes, 10) == [1, 2, 3, 0]
    assert largest_faces([], 2) == []


class _TwoFaceDetector:
    """RetinaFace's answer for a frame with a small, confident face first and a large, less confident one."""

    def __init__(self, small: np.ndarray, large: np.ndarray) -> None:
        self.rows = [self._row(small, 0.999), self._row(large, 0.975)]  # RetinaFace sorts by score

    @staticmethod
    def _row(points: np.ndarray, score: float) -> np.ndarray:
        box = [*points.min(axis=0) - 20, *points.max(axis=0) + 20, score]
        return np.concatenate([np.float32(box), points.ravel()]).astype(np.float32)

    def detect_faces(self, image: np.ndarray, conf_threshold: float = 0.8) -> np.ndarray:
        return np.stack(self.rows)


def test_max_faces_keeps_the_largest_face_not_the_most_confident(enhancer: FaceEnhancer) -> None:
    """SADTALKER_ENHANCER_MAX_FACES=1 on a group photo restores the big face, even if a small one scores higher."""
    rng = np.random.default_rng(4)
    frame = cv2.resize(rng.integers(0, 256, (20, 20, 3), np.uint8), (320, 320))
    large = (TEMPLATE * 0.35).astype(np.float32)  # aligned crop covers about [0, 180) x [0, 180)
    small = (TEMPLATE * 0.08 + 250).astype(np.float32)  # about [250, 291) x [250, 291); eyes 10 px apart
    saved = enhancer.gfpgan, enhancer.helper.face_parse, enhancer.helper.face_det, enhancer.max_faces
    try:
        enhancer.gfpgan, enhancer.helper.face_parse = _narrow_gfpgan(), _narrow_parser()
        enhancer.helper.face_det = _TwoFaceDetector(small, large)
        enhancer.max_faces = 1
        (out,) = enhancer.enhance(frame[None], generator=torch.Generator().manual_seed(0))
    finally:
        enhancer.gfpgan, enhancer.helper.face_parse, enhancer.helper.face_det, enhancer.max_faces = saved
    changed = np.abs(out.astype(np.int16) - frame).max(axis=-1) > 0
    assert changed[:180, :180].mean() > 0.1  # the large face was restored and pasted back
    assert not changed[240:, 240:].any()  # the small one was left alone
    assert not changed[:, 200:240].any() and not changed[200:240, :].any()  # and nothing between them


def test_a_stop_check_between_faces_stops_before_the_next_face(enhancer: FaceEnhancer) -> None:
    """Two faces in one frame, one GFPGAN pass each (CPU): a stop requested during the first face ends the
    enhancement before the second face, not after the whole batch."""
    frames, landmarks = _frames()
    passes: list[int] = []
    original_fn = enhancer._gfpgan_fn

    def counting_fn(precision: str, compiled: bool = True):  # type: ignore[no-untyped-def]
        restore = original_fn(precision, compiled)  # type: ignore[arg-type]

        def counted(faces: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
            passes.append(len(faces))
            return restore(faces, *noise)

        return counted

    class StopRequested(Exception):
        pass

    def check() -> None:
        if passes:  # the stop came while the first face was restored
            raise StopRequested

    original_net, original_batch = enhancer.gfpgan, enhancer.face_batch
    try:
        enhancer.gfpgan, enhancer.face_batch = _narrow_gfpgan(), 1
        enhancer._gfpgan_fn = counting_fn  # type: ignore[method-assign]
        with pytest.raises(StopRequested):
            enhancer.enhance(frames[:1], landmarks=[landmarks], check=check)
        assert passes == [1]
        # The enhancer is usable again afterwards (its lock and helper state were released by the unwinding).
        out = enhancer.enhance(frames[:1], landmarks=[landmarks], check=lambda: None)
        assert out.shape == (1, 256, 256, 3) and passes == [1, 1, 1]
    finally:
        del enhancer._gfpgan_fn
        enhancer.gfpgan, enhancer.face_batch = original_net, original_batch
