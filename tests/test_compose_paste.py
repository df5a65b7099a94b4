"""Aspect resize and full-mode paste-back against the original's golden arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import load_golden

from sadtalker.compose import PasteBox, aspect_resize, aspect_size, paste_frame, paste_frames
from sadtalker.errors import RenderError
from sadtalker.media import load_image

FULL_CASE = "fullstill_full3_256"


@pytest.fixture(scope="module")
def full_case(reference_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    case_dir = reference_dir / "golden" / FULL_CASE
    return case_dir, load_golden(case_dir)


def test_aspect_resize_matches_golden(golden_case_dir: Path) -> None:
    golden = load_golden(golden_case_dir)
    crop_wh = tuple(golden["crop_info_size_wh"])
    frame0 = aspect_resize(golden["render_uint8"][0], crop_wh)
    np.testing.assert_array_equal(frame0, golden["video_frame0_uint8"])  # exact
    batch = aspect_resize(golden["render_uint8"], crop_wh)
    assert batch.shape == (3, *golden["video_frame0_uint8"].shape)
    np.testing.assert_array_equal(batch[0], frame0)
    assert aspect_size(256, crop_wh) == (frame0.shape[1], frame0.shape[0])


def test_paste_geometry_matches_golden(full_case: tuple[Path, dict[str, np.ndarray]]) -> None:
    _, golden = full_case
    box = PasteBox.from_crop(golden["crop_box_xyxy"], golden["quad_lx_ly_rx_ry"])
    assert (box.height, box.width) == tuple(golden["paste_src_hw"])
    assert box.center == tuple(golden["paste_center_xy"])
    # crop_info[0] is the quad's (int) size too, but the paste does not use it.
    assert (box.width, box.height) == tuple(golden["crop_info_size_wh"])


def test_paste_full_frame0_matches_golden(full_case: tuple[Path, dict[str, np.ndarray]]) -> None:
    case_dir, golden = full_case
    image = load_image(case_dir / "full3.png")  # = cv2.imread + BGR->RGB, as the original reads it
    box = PasteBox.from_crop(golden["crop_box_xyxy"], golden["quad_lx_ly_rx_ry"])
    frame0 = aspect_resize(golden["render_uint8"][0], tuple(golden["crop_info_size_wh"]))
    assert frame0.shape[0] % 2 == 1  # 255 rows: this case exercises the even crop of the intermediate video
    pasted = paste_frame(frame0, image, box)
    expected = golden["paste_full_frame0"]
    assert pasted.shape == expected.shape and pasted.dtype == np.uint8
    diff = np.abs(pasted.astype(np.int16) - expected.astype(np.int16))
    print(f"paste_full_frame0: max abs {diff.max()} levels, mean abs {diff.mean():.2e}")
    assert diff.max() <= 2  # README section 6 tolerance
    # Outside the box the photo is untouched.
    outside = np.ones(image.shape[:2], bool)
    outside[box.y1 : box.y2, box.x1 : box.x2] = False
    np.testing.assert_array_equal(pasted[outside], image[outside])
    # Batch/stream API gives the same frame.
    frames = aspect_resize(golden["render_uint8"][:2], tuple(golden["crop_info_size_wh"]))
    streamed = list(paste_frames(frames, image, box))
    assert len(streamed) == 2
    np.testing.assert_array_equal(streamed[0], pasted)


def _textured(h: int, w: int, seed: int, cell: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // cell, 2), max(w // cell, 2), 3), np.uint8)
    return cv2.resize(small, (w, h))


def test_pasting_the_photos_own_pixels_changes_nothing() -> None:
    """Poisson blending keeps the patch's gradients and takes the boundary from the photo, so pasting the photo's
    own region, or that region brightened by a constant, must give the photo back (hand-derived, no OpenCV)."""
    image = _textured(90, 120, 1) // 2 + 60  # levels 60..187: room for +40 without clipping
    box = PasteBox(30, 20, 72, 58)  # even size: no row/column dropped, and the resize to the box is the identity
    region = image[box.y1 : box.y2, box.x1 : box.x2]
    for offset in (0, 40):
        pasted = paste_frame(region + np.uint8(offset), image, box)
        diff = np.abs(pasted.astype(np.int16) - image)
        print(f"offset {offset}: max {diff.max()} levels, mean {diff.mean():.3f}")
        assert diff.max() <= 2 and diff.mean() < 0.5, offset  # solver rounding only
    # A different patch does change the inside (beyond the 1-pixel rim seamlessClone keeps) and nothing outside.
    pasted = paste_frame(_textured(38, 42, 2), image, box)
    outside = np.ones(image.shape[:2], bool)
    outside[box.y1 + 1 : box.y2 - 1, box.x1 + 1 : box.x2 - 1] = False
    np.testing.assert_array_equal(pasted[outside], image[outside])
    assert np.abs(pasted.astype(np.int16) - image)[~outside].mean() > 5
    # An odd-sized frame loses its last row/column first (the original's intermediate video is yuv420p).
    odd = _textured(41, 43, 7)
    np.testing.assert_array_equal(paste_frame(odd, image, box), paste_frame(odd[:40, :42].copy(), image, box))


@pytest.mark.parametrize("box", [PasteBox(-20, 10, 40, 70), PasteBox(80, 50, 130, 100), PasteBox(-1, -1, 121, 91)])
def test_paste_box_past_the_border_is_clipped(box: PasteBox) -> None:
    """The original's seamlessClone would raise here; we cut the overflow and keep the face where it belongs."""
    image, frame = _textured(90, 120, 3) // 2 + 60, _textured(60, 60, 4, cell=2) // 2 + 60  # no saturation
    pasted = paste_frame(frame, image, box)
    assert pasted.shape == image.shape
    # Poisson blending keeps the patch's gradients inside the box (away from the blended rim): they must line
    # up with the resized frame at its true position better than at any shifted position.
    patch = cv2.resize(frame, (box.width, box.height)).astype(np.float64)
    x1, y1 = max(box.x1, 0) + 6, max(box.y1, 0) + 6
    x2, y2 = min(box.x2, 120) - 6, min(box.y2, 90) - 6
    got = np.diff(pasted[y1:y2, x1:x2].astype(np.float64), axis=1)

    def misfit(dx: int, dy: int) -> float:
        ys = slice(y1 - box.y1 + dy, y2 - box.y1 + dy)
        xs = slice(x1 - box.x1 + dx, x2 - box.x1 + dx)
        return float(np.abs(got - np.diff(patch[ys, xs], axis=1)).mean())

    aligned = misfit(0, 0)
    assert aligned < 1.5
    for dx, dy in [(-2, 0), (-1, 0), (1, 0), (2, 0), (0, -2), (0, -1), (0, 1), (0, 2)]:
        assert aligned < 0.5 * misfit(dx, dy), (dx, dy)


def test_paste_errors() -> None:
    image, frame = _textured(50, 50, 5), _textured(20, 20, 6)
    with pytest.raises(RenderError):
        paste_frame(frame, image, PasteBox(60, 60, 90, 90))
    with pytest.raises(ValueError):
        PasteBox(0, 0, 2, 10)
    with pytest.raises(ValueError):
        paste_frame(frame.astype(np.float32), image, PasteBox(0, 0, 20, 20))
