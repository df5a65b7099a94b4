"""Face crop geometry: exact against the reference kit, plus fast unit tests on synthetic landmarks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import load_golden

from sadtalker.errors import ImageError
from sadtalker.face.crop import crop_face, landmarks_in_crop, quad_geometry


def _case_image(case_dir: Path) -> np.ndarray:
    name = json.loads((case_dir / "case.json").read_text())["image"]
    return cv2.cvtColor(cv2.imread(str(case_dir / name)), cv2.COLOR_BGR2RGB)


def _case_preprocess(case_dir: Path) -> str:
    return json.loads((case_dir / "case.json").read_text())["preprocess"]


def _synthetic_landmarks(centre: tuple[float, float], eye_distance: float) -> np.ndarray:
    """68 points of an upright frontal face: only eyes (36-47), nose (30) and mouth (48-67) are meaningful."""
    cx, cy = centre
    d = eye_distance
    rng = np.random.default_rng(0)
    lm = np.column_stack([cx + rng.uniform(-d, d, 68), cy + rng.uniform(-d, d, 68)])
    eye_shape = np.array([[-0.15, 0], [-0.05, -0.05], [0.05, -0.05], [0.15, 0], [0.05, 0.05], [-0.05, 0.05]]) * d
    lm[36:42] = eye_shape + [cx - d / 2, cy - 0.3 * d]
    lm[42:48] = eye_shape + [cx + d / 2, cy - 0.3 * d]
    lm[30] = [cx, cy + 0.2 * d]
    lm[48:68] = np.column_stack([np.linspace(cx - 0.4 * d, cx + 0.4 * d, 20), np.full(20, cy + 0.7 * d)])
    lm[54] = [cx + 0.4 * d, cy + 0.7 * d]
    return lm.astype(np.float32)


def test_crop_geometry_matches_golden(golden_case_dir: Path) -> None:
    golden = load_golden(golden_case_dir)
    image = _case_image(golden_case_dir)
    crop = crop_face(image, golden["lm68_orig"], preprocess=_case_preprocess(golden_case_dir), size=256)

    assert crop.geometry is not None
    # Exact: these are integers or floats computed by the same float32/float64 operations as the original.
    assert crop.geometry.align_rsize_wh == tuple(golden["align_rsize_wh"])
    assert crop.geometry.crop_box_xyxy == tuple(golden["crop_box_xyxy"])
    np.testing.assert_array_equal(np.array(crop.geometry.quad_lx_ly_rx_ry), golden["quad_lx_ly_rx_ry"])
    assert crop.crop_info_size_wh == tuple(golden["crop_info_size_wh"])
    assert crop.cropped_hw_before_resize == tuple(golden["cropped_hw_before_resize"])
    assert crop.image_size_wh == (image.shape[1], image.shape[0])

    assert crop.crop_image.shape == golden["crop_image"].shape and crop.crop_image.dtype == np.uint8
    diff = np.abs(crop.crop_image.astype(np.int16) - golden["crop_image"])
    assert diff.max() <= 1, f"crop_image differs by up to {diff.max()} levels"


def test_given_landmarks_map_into_the_crop_like_the_golden(golden_case_dir: Path) -> None:
    """The reference kit's second-call landmarks are the original landmarks mapped into the crop."""
    golden = load_golden(golden_case_dir)
    crop = crop_face(
        _case_image(golden_case_dir), golden["lm68_orig"], preprocess=_case_preprocess(golden_case_dir), size=256
    )
    np.testing.assert_allclose(landmarks_in_crop(crop, golden["lm68_orig"]), golden["lm68_crop"], atol=1e-4)


def test_full_mode_paste_box_matches_golden(reference_dir: Path) -> None:
    case_dir = reference_dir / "golden" / "fullstill_full3_256"
    golden = load_golden(case_dir)
    crop = crop_face(_case_image(case_dir), golden["lm68_orig"], preprocess="full", size=256)
    ox1, oy1, ox2, oy2 = crop.paste_box_xyxy
    # Paste-back resizes the frame to (ox2-ox1, oy2-oy1) = src (h, w) and centres it at the box centre.
    assert (oy2 - oy1, ox2 - ox1) == tuple(golden["paste_src_hw"])
    assert ((ox1 + ox2) // 2, (oy1 + oy2) // 2) == tuple(golden["paste_center_xy"])


def test_crop_and_full_give_the_same_crop() -> None:
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    lm = _synthetic_landmarks((200, 150), 60)
    crop = crop_face(image, lm, preprocess="crop", size=64)
    full = crop_face(image, lm, preprocess="full", size=64)
    np.testing.assert_array_equal(crop.crop_image, full.crop_image)
    assert crop.paste_box_xyxy == full.paste_box_xyxy


def test_quad_is_a_square_around_the_face() -> None:
    lm = _synthetic_landmarks((500, 400), 100)
    geometry = quad_geometry(lm, (1000, 800))
    lx, ly, rx, ry = geometry.quad_lx_ly_rx_ry
    clx, cly, crx, cry = geometry.crop_box_xyxy
    # Upright face: axis-aligned square of side 2 * max(2 * eye distance, 1.8 * eye-mouth distance) = 400.
    assert rx - lx == pytest.approx(400, abs=1e-3) and ry - ly == pytest.approx(400, abs=1e-3)
    # Centre = eye midpoint (500, 370) + 0.1 * eye-to-mouth (0, 100) -> quad [300, 700] x [180, 580].
    # Border box = quad +- 10 % of its side; quad bounds are relative to it (+0.5 like the original).
    assert (clx, cly, crx, cry) == (260, 140, 740, 620)
    assert lx == pytest.approx(300 - 260 + 0.5, abs=1e-3) and ly == pytest.approx(180 - 140 + 0.5, abs=1e-3)
    ox1, oy1, ox2, oy2 = geometry.paste_box_xyxy
    assert ox1 <= lm[36:48, 0].min() and ox2 >= lm[36:48, 0].max() and oy2 >= lm[48:60, 1].max()
    assert geometry.align_rsize_wh == (1000, 800)


def test_huge_face_uses_the_downscaled_image() -> None:
    # Quad side 2 * 2 * 600 = 2400 >= 4 * 512: the original works on the image downscaled by 2.
    lm = _synthetic_landmarks((1500, 1500), 600)
    geometry = quad_geometry(lm, (3001, 3000))
    assert geometry.align_rsize_wh == (1500, 1500)  # rint(3001 / 2) = 1500 (round half to even)
    clx, cly, crx, cry = geometry.crop_box_xyxy
    assert 0 <= clx < crx <= 1500 and 0 <= cly < cry <= 1500
    lx, ly, rx, ry = geometry.quad_lx_ly_rx_ry
    assert rx - lx == pytest.approx(1200, abs=1e-3)


def test_bottom_edge_is_clamped_by_width_like_the_original() -> None:
    # Wide image, face at the bottom: the original clamps ry by the image WIDTH, so it may exceed the height.
    lm = _synthetic_landmarks((500, 280), 40)
    geometry = quad_geometry(lm, (1000, 300))
    assert geometry.crop_box_xyxy[3] == 300
    assert geometry.quad_lx_ly_rx_ry[3] > 300 - geometry.crop_box_xyxy[1]
    image = np.zeros((300, 1000, 3), dtype=np.uint8)
    crop = crop_face(image, lm, preprocess="crop", size=32)
    # The actual cut stops at the image edge while crop_info keeps the unclamped size (as in the original).
    assert crop.cropped_hw_before_resize[0] < crop.crop_info_size_wh[1]


def test_resize_mode_uses_the_whole_image() -> None:
    image = np.random.default_rng(2).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    crop = crop_face(image, None, preprocess="resize", size=64)
    assert crop.geometry is None
    assert crop.paste_box_xyxy == (0, 0, 90, 120)
    assert crop.crop_info_size_wh == (90, 120)
    assert crop.cropped_hw_before_resize == (120, 90)
    np.testing.assert_array_equal(crop.crop_image, cv2.resize(image, (64, 64)))


def test_bad_inputs_raise_clear_errors() -> None:
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    lm = _synthetic_landmarks((50, 50), 20)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        crop_face(image, lm, preprocess="extra", size=64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(68, 2\)"):
        crop_face(image, lm[:5], preprocess="crop", size=64)
    with pytest.raises(ValueError, match="NaN"):
        crop_face(image, np.full((68, 2), np.nan), preprocess="crop", size=64)
    with pytest.raises(ValueError, match="needs the 68 face landmarks"):
        crop_face(image, None, preprocess="full", size=64)
    with pytest.raises(ImageError, match="uint8 RGB"):
        crop_face(image.astype(np.float32), lm, preprocess="crop", size=64)
    with pytest.raises(ImageError, match="outside the image"):
        crop_face(image, lm + 5000, preprocess="crop", size=64)
