"""Photo check verdicts from injected detections (the synthetic detector weights find faces everywhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.photo_check import (
    MIN_FACE_PIXELS,
    PhotoChecker,
    PhotoCheckUnavailable,
    PhotoUnreadable,
    judge,
    shrink_for_detection,
)


def det(x1: float, y1: float, x2: float, y2: float, score: float = 0.99) -> list[float]:
    """One RetinaFace row: box, score, then 5 landmark points (unused by the verdict)."""
    return [x1, y1, x2, y2, score, *([0.0] * 10)]


def test_one_big_face_is_usable() -> None:
    verdict = judge(np.array([det(100, 80, 400, 420)]), 512, 512)
    assert verdict.usable and verdict.reason == "one clear face found"
    assert [(f.x1, f.y1, f.x2, f.y2, f.score) for f in verdict.faces] == [(100, 80, 400, 420, 0.99)]


def test_no_detection_is_not_usable() -> None:
    for empty in (np.zeros((0, 15)), np.array([])):
        verdict = judge(empty, 512, 512)
        assert not verdict.usable and verdict.faces == () and verdict.reason.startswith("no face found")


def test_low_score_and_broken_boxes_are_ignored() -> None:
    rows = np.array([det(10, 10, 300, 300, 0.5), det(np.nan, 0, 100, 100), det(600, 600, 700, 700)])
    verdict = judge(rows, 512, 512)  # low score, non-finite, outside the photo
    assert verdict.faces == () and not verdict.usable


def test_several_faces_are_reported_largest_first_and_not_usable() -> None:
    verdict = judge(np.array([det(0, 0, 100, 100), det(200, 200, 500, 500)]), 512, 512)
    assert not verdict.usable and verdict.reason.startswith("2 faces found")
    assert verdict.faces[0].x1 == 200 and verdict.to_json()["face_count"] == 2


def test_small_face_is_not_usable() -> None:
    side = MIN_FACE_PIXELS - 1
    verdict = judge(np.array([det(10, 10, 10 + side, 10 + 2 * side)]), 512, 512)
    assert not verdict.usable and f"only {side} px" in verdict.reason


def test_boxes_are_scaled_back_and_clipped_to_the_photo() -> None:
    # Found on the photo shrunk to half size; one corner beyond the border.
    verdict = judge(np.array([det(50, 40, 530, 300)]), 1000, 800, scale=0.5)
    assert [(f.x1, f.y1, f.x2, f.y2) for f in verdict.faces] == [(100, 80, 1000, 600)]


def test_checker_shrinks_large_photos_before_detection() -> None:
    seen: list[tuple[int, ...]] = []

    def detect(image: np.ndarray) -> np.ndarray:
        seen.append(image.shape)
        return np.array([det(160, 160, 480, 480)])  # in detector pixels

    checker = PhotoChecker(Path("/nonexistent"), detect=detect, max_side=640)
    verdict = checker.check_array(np.zeros((1024, 1024, 3), np.uint8))
    assert seen == [(640, 640, 3)]
    assert verdict.usable and (verdict.width, verdict.height) == (1024, 1024)
    assert verdict.faces[0].x1 == 256 and verdict.faces[0].x2 == 768
    small, scale = shrink_for_detection(np.zeros((300, 200, 3), np.uint8), 640)
    assert small.shape == (300, 200, 3) and scale == 1.0


def test_missing_weights_and_unreadable_photo_are_specific_errors(tmp_path: Path) -> None:
    checker = PhotoChecker(tmp_path)
    with pytest.raises(PhotoCheckUnavailable, match="detection_Resnet50_Final.pth not found"):
        checker.check_array(np.zeros((32, 32, 3), np.uint8))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(PhotoUnreadable, match="source_image"):
        checker.check(junk)


def test_opt_in_face_check_on_submit_refuses_a_faceless_photo(tmp_path: Path) -> None:
    from test_serving_validation import make_config, request, write_png, write_wav

    from serving.validation import RequestInvalid
    from serving.webapp import FaceCheckingValidator, WebContext, WebSettings

    config = make_config(tmp_path)
    image, audio = write_png(config.input_dirs[0] / "face.png"), write_wav(config.input_dirs[0] / "speech.wav")
    faces: list[np.ndarray] = [np.zeros((0, 15))]
    checker = PhotoChecker(config.checkpoint_dir, detect=lambda _image: faces[0])

    off = WebContext(config, WebSettings(check_face_on_submit=False), checker, None).validator()  # type: ignore[arg-type]
    assert not isinstance(off, FaceCheckingValidator) and off.validate(request(image, audio)).source_image == str(image)

    on = WebContext(config, WebSettings(check_face_on_submit=True), checker, None).validator()  # type: ignore[arg-type]
    with pytest.raises(RequestInvalid) as info:
        on.validate(request(image, audio))
    assert info.value.field == "source_image" and "no face found" in str(info.value)
    faces[0] = np.array([det(0, 0, 20, 20), det(20, 20, 40, 40)])  # any face passes (several are only a warning)
    assert on.validate(request(image, audio)).source_image == str(image)
    with pytest.raises(RequestInvalid, match="outside the allowed input"):  # the usual checks still come first
        on.validate(request("/etc/hostname", audio))
    assert WebSettings.from_env({"SADTALKER_CHECK_FACE_ON_SUBMIT": "1"}).check_face_on_submit
    assert not WebSettings.from_env({}).check_face_on_submit


def test_score_threshold_is_the_pipelines() -> None:
    """The photo check judges detections with the render pipeline's threshold (kept here without torch)."""
    from sadtalker.face import detect
    from serving import photo_check

    assert photo_check.SCORE_THRESHOLD == detect.SCORE_THRESHOLD
