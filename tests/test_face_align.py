"""3DMM alignment (align_img): golden comparison and properties of the fit on synthetic landmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import load_golden

from sadtalker.face.align import (
    LM3D_STD_5PTS,
    align_for_recon,
    fit_scale_translation,
    five_points,
    flip_y,
)


def test_alignment_matches_golden(golden_case_dir: Path) -> None:
    golden = load_golden(golden_case_dir)
    aligned = align_for_recon(golden["crop_image"], golden["lm68_crop"])

    np.testing.assert_array_equal(aligned.landmarks_in, golden["recon_lm68_flipped_in"])
    # The least-squares fit runs in float64 like the original; only LAPACK rounding could differ.
    np.testing.assert_allclose(aligned.trans_params, golden["trans_params_raw"], rtol=1e-12, atol=0)
    diff = np.abs(aligned.image_224.astype(np.int16) - golden["recon_input_224"])
    assert aligned.image_224.dtype == np.uint8 and diff.max() <= 1, f"recon_input_224 off by {diff.max()} levels"
    np.testing.assert_allclose(aligned.landmarks_224, golden["recon_lm68_224"], rtol=0, atol=1e-4)


def test_flip_y_and_five_points() -> None:
    lm = np.arange(136, dtype=np.float32).reshape(68, 2)
    flipped = flip_y(lm, 256)
    np.testing.assert_array_equal(flipped[:, 0], lm[:, 0])
    np.testing.assert_array_equal(flipped[:, 1], 255 - lm[:, 1])
    five = five_points(lm)
    np.testing.assert_array_equal(five[0], (lm[36] + lm[39]) / 2)
    np.testing.assert_array_equal(five[1], (lm[42] + lm[45]) / 2)
    np.testing.assert_array_equal(five[2:], lm[[30, 48, 54]])


def test_fit_recovers_scale_and_translation() -> None:
    points = 37.5 * LM3D_STD_5PTS[:, :2].astype(np.float64) + [120.0, 90.0]
    t, s = fit_scale_translation(points, LM3D_STD_5PTS)
    np.testing.assert_allclose(t, [120.0, 90.0], atol=1e-9)
    assert s == pytest.approx(37.5, abs=1e-9)


def test_aligned_face_lands_on_the_standard_positions() -> None:
    # A face whose 5 points are an exact (scaled, shifted) projection of the standard face, in y-up coordinates.
    height = 256
    points_y_up = 60.0 * LM3D_STD_5PTS[:, :2].astype(np.float64) + [130.0, 120.0]
    lm = np.zeros((68, 2))
    lm[[36, 39]] = points_y_up[0]
    lm[[42, 45]] = points_y_up[1]
    lm[[30, 48, 54]] = points_y_up[2:]
    lm_image = lm.copy()
    lm_image[:, 1] = height - 1 - lm[:, 1]  # the API takes image convention (y down)
    image = np.random.default_rng(0).integers(0, 256, (height, height, 3), dtype=np.uint8)

    aligned = align_for_recon(image, lm_image)
    assert aligned.image_224.shape == (224, 224, 3) and aligned.image_224.dtype == np.uint8
    w0, h0, s, tx, ty = aligned.trans_params
    assert (w0, h0) == (256, 256)
    assert s == pytest.approx(102.0 / 60.0, rel=1e-6)
    np.testing.assert_allclose([tx, ty], [130.0, 120.0], atol=1e-3)
    # In the 224 window the face is 102 units wide and centred (up to the int() of the resized size).
    expected = 102.0 * LM3D_STD_5PTS[:, :2] + 112.0
    np.testing.assert_allclose(five_points(aligned.landmarks_224), expected, atol=1.0)
