"""FaceLandmarker: loading from a checkpoint directory (never downloading) and the face-selection logic.

Note: with the synthetic (random) RetinaFace weights the detector does NOT come back empty on real photos: the
random classifier scores thousands of boxes above 0.97.  The "no face" path is therefore exercised with a
synthetic detector file whose classification head is set to always answer "background".
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_blind_checkpoints

from sadtalker.checkpoints.files import FACE_ALIGNMENT_FILE as ALIGNMENT_FILE
from sadtalker.checkpoints.files import FACE_DETECTION_FILE as DETECTOR_FILE
from sadtalker.errors import NoFaceError
from sadtalker.face.detect import FaceLandmarker, decode_heatmaps, fan_landmarks98
from sadtalker.weights import CheckpointError


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every way the loaders could fetch weights fail loudly; returns the attempts."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        raise AssertionError(f"network access attempted: {args[:2]}")

    import facexlib.alignment
    import facexlib.detection
    import facexlib.utils.misc
    import torch.hub

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(facexlib.utils.misc, "download_url_to_file", refuse)
    for module in (facexlib.utils.misc, facexlib.alignment, facexlib.detection):
        monkeypatch.setattr(module, "load_file_from_url", refuse)
    return attempts


@pytest.fixture(scope="module")
def landmarker(talker) -> FaceLandmarker:
    """The session pipeline's FaceLandmarker (FaceLandmarker(synthetic_checkpoints, "cpu"))."""
    return talker.landmarker


def test_loads_from_directory_without_network(
    synthetic_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory holding the detector saved the official way (DataParallel 'module.' prefix) and the FAN.
    weights = tmp_path / "weights"
    weights.mkdir()
    state = torch.load(synthetic_checkpoints / DETECTOR_FILE, map_location="cpu", weights_only=True)
    torch.save({f"module.{key}": value for key, value in state.items()}, weights / DETECTOR_FILE)
    (weights / ALIGNMENT_FILE).symlink_to(synthetic_checkpoints / ALIGNMENT_FILE)

    attempts = _forbid_network(monkeypatch)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may be resolved against (or written to) the working directory

    loaded = FaceLandmarker(weights, device="cpu")

    assert attempts == []
    assert os.listdir(cwd) == []
    assert not loaded.detector.training and not loaded.aligner.training
    expected = state["body.conv1.weight"]
    assert torch.equal(loaded.detector.state_dict()["body.conv1.weight"], expected)
    fan_state = torch.load(synthetic_checkpoints / ALIGNMENT_FILE, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(value, fan_state[key]) for key, value in loaded.aligner.state_dict().items())


@pytest.mark.parametrize("missing", [DETECTOR_FILE, ALIGNMENT_FILE])
def test_missing_weight_file_is_named(synthetic_checkpoints: Path, tmp_path: Path, missing: str) -> None:
    for name in (DETECTOR_FILE, ALIGNMENT_FILE):
        if name != missing:
            (tmp_path / name).symlink_to(synthetic_checkpoints / name)
    with pytest.raises(CheckpointError, match=missing) as info:
        FaceLandmarker(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_wrong_weight_file_is_named(synthetic_checkpoints: Path, tmp_path: Path) -> None:
    # The FAN file where the detector should be: a strict load names the file and the offending keys.
    (tmp_path / DETECTOR_FILE).symlink_to(synthetic_checkpoints / ALIGNMENT_FILE)
    (tmp_path / ALIGNMENT_FILE).symlink_to(synthetic_checkpoints / ALIGNMENT_FILE)
    with pytest.raises(CheckpointError, match=DETECTOR_FILE):
        FaceLandmarker(tmp_path)


def test_synthetic_detector_reports_no_face(
    synthetic_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_blind_checkpoints(synthetic_checkpoints, tmp_path)
    _forbid_network(monkeypatch)

    blind = FaceLandmarker(tmp_path)
    photo = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face found in portrait.png; use a clear frontal photo or pass landmarks"):
        blind.detect(photo, image_name="portrait.png")


def test_synthetic_networks_run_on_an_image(landmarker: FaceLandmarker) -> None:
    # Random weights give meaningless but well-formed output; this checks the wiring end to end.
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    found = landmarker.detect(image)
    assert found.landmarks.shape == (68, 2) and found.landmarks.dtype == np.float32
    assert np.all(np.isfinite(found.landmarks))
    assert found.num_faces >= 1 and found.score > 0.97


class _StubDetector:
    def __init__(self, detections: np.ndarray) -> None:
        self.detections = detections
        self.inputs: list[np.ndarray] = []

    def detect_faces(self, image: np.ndarray, conf_threshold: float) -> np.ndarray:
        assert conf_threshold == 0.97
        self.inputs.append(image)
        return self.detections


class _StubAligner:
    """Replaces ``fan_landmarks98``: records the crops it is given and answers a fixed point."""

    def __init__(self) -> None:
        self.crops: list[np.ndarray] = []

    def __call__(self, aligner: object, crop: np.ndarray) -> np.ndarray:
        self.crops.append(np.array(crop))
        return np.tile(np.array([[1.5, 2.5]]), (98, 1))


@pytest.fixture()
def stub_aligner(monkeypatch: pytest.MonkeyPatch) -> _StubAligner:
    stub = _StubAligner()
    monkeypatch.setattr("sadtalker.face.detect.fan_landmarks98", stub)
    return stub


def _detection(x1: float, y1: float, x2: float, y2: float, score: float) -> list[float]:
    return [x1, y1, x2, y2, score] + [0.0] * 10


def test_largest_face_is_used_and_logged(caplog: pytest.LogCaptureFixture, stub_aligner: _StubAligner) -> None:
    detections = np.array(
        [
            _detection(10, 10, 30, 30, 0.999),  # best score, small
            _detection(40.7, 20.2, 90.9, 80.6, 0.98),  # largest
            _detection(float("inf"), 0, float("inf"), 5, 0.99),  # broken weights only: ignored
        ],
        dtype=np.float32,
    )
    detector, aligner = _StubDetector(detections), stub_aligner
    landmarker = FaceLandmarker.from_networks(detector, None)  # type: ignore[arg-type]
    image = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)

    with caplog.at_level(logging.INFO, logger="sadtalker.face.detect"):
        found = landmarker.detect(image, image_name="group.jpg")

    assert found.num_faces == 2
    assert found.score == pytest.approx(0.98)
    assert "2 faces found in group.jpg; using the largest" in caplog.text
    # The FAN sees the box cut with int() of its corners; landmarks come back shifted by that corner.
    np.testing.assert_array_equal(aligner.crops[0], image[20:80, 40:90])
    np.testing.assert_array_equal(found.landmarks, np.tile(np.float32([[41.5, 22.5]]), (68, 1)))
    # Default: the detector gets BGR, as facexlib expects.
    np.testing.assert_array_equal(detector.inputs[0], image[..., ::-1])


def test_rgb_as_bgr_reproduces_the_original_first_call(stub_aligner: _StubAligner) -> None:
    detector = _StubDetector(np.array([_detection(-5.5, 3, 50, 40, 0.99)], dtype=np.float32))
    aligner = stub_aligner
    landmarker = FaceLandmarker.from_networks(detector, None)  # type: ignore[arg-type]
    image = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    found = landmarker.detect(image, rgb_as_bgr=True)
    np.testing.assert_array_equal(detector.inputs[0], image)
    # A corner outside the image is clamped (numpy would wrap a negative start around).
    np.testing.assert_array_equal(aligner.crops[0], image[3:40, 0:50])
    assert found.num_faces == 1 and found.landmarks[0].tolist() == [1.5, 5.5]


def test_no_usable_box_raises_no_face(stub_aligner: _StubAligner) -> None:
    empty = np.zeros((0, 15), dtype=np.float32)
    landmarker = FaceLandmarker.from_networks(_StubDetector(empty), None)  # type: ignore[arg-type]
    with pytest.raises(NoFaceError, match="no face found in me.png") as info:
        landmarker.detect(np.zeros((32, 32, 3), dtype=np.uint8), image_name="me.png")
    assert info.value.field == "source_image"
    outside = np.array([_detection(50, 50, 60, 60, 0.99)], dtype=np.float32)
    landmarker = FaceLandmarker.from_networks(_StubDetector(outside), None)  # type: ignore[arg-type]
    with pytest.raises(NoFaceError):
        landmarker.detect(np.zeros((32, 32, 3), dtype=np.uint8))
    assert stub_aligner.crops == []


def test_heatmap_decoding_matches_facexlib() -> None:
    from facexlib.alignment.awing_arch import calculate_points

    rng = np.random.default_rng(3)
    for trial in range(20):
        heatmaps = rng.standard_normal((1, 98, 64, 64)).astype(np.float32)
        if trial % 2:  # put some maxima in the first / last rows to hit the batch-wide neighbour quirk
            heatmaps[0, trial, trial % 64 if trial < 10 else 63, 5] = 100.0
        np.testing.assert_array_equal(decode_heatmaps(heatmaps), calculate_points(heatmaps))


def test_heatmap_maximum_on_the_last_pixel_does_not_crash() -> None:
    heatmaps = np.zeros((1, 2, 64, 64), dtype=np.float32)
    heatmaps[0, 0, 63, 63] = 1.0
    heatmaps[0, 1, 10, 20] = 1.0
    points = decode_heatmaps(heatmaps)
    assert points.shape == (1, 2, 2) and np.all(np.isfinite(points))
    # Right neighbour clamped to the pixel itself; the last-row quirk reads the last pixel (itself) as below.
    assert points[0, 0].tolist() == [63.75, 63.75]


def test_fan_landmarks_match_facexlib_get_landmarks(
    landmarker: FaceLandmarker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import facexlib.alignment.awing_arch as awing

    # facexlib's decoder crashes on the random FAN's heatmaps (maximum on the last pixel); swap in ours, shown
    # identical above wherever facexlib's does not crash, to compare the rest: resize, BGR, /255, scaling.
    monkeypatch.setattr(awing, "calculate_points", decode_heatmaps)
    crop = np.random.default_rng(5).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    ours = fan_landmarks98(landmarker.aligner, crop)
    with torch.inference_mode():
        theirs = landmarker.aligner.get_landmarks(crop)
    assert ours.shape == (98, 2)
    np.testing.assert_array_equal(ours, theirs)
