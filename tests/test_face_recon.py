"""3DMM ReconNet and the whole face stage (prepare_source) against the reference kit's goldens."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import load_golden

from sadtalker.conformance import face_arrays
from sadtalker.errors import ImageError
from sadtalker.face import FaceLandmarks, ReconNet, prepare_source, source_coefficients
from sadtalker.weights import CheckpointError

CHECKPOINT = "SadTalker_V0.0.2_256.safetensors"
COEFF_TOL = 1e-4  # README §6: 257/73 coefficients <= 1e-4 abs


@pytest.fixture(scope="module")
def checkpoint(checkpoint_256: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return checkpoint_256


@pytest.fixture(scope="module")
def recon_net(talker) -> ReconNet:
    """The session pipeline's ReconNet (built from the 256 checkpoint, as ReconNet(checkpoint) would be)."""
    return talker.models[256].recon


def _case(case_dir: Path) -> tuple[np.ndarray, dict, dict[str, np.ndarray]]:
    meta = json.loads((case_dir / "case.json").read_text())
    image = cv2.cvtColor(cv2.imread(str(case_dir / meta["image"])), cv2.COLOR_BGR2RGB)
    with np.load(case_dir / "inputs.npz") as inputs:
        injected = {key: inputs[key] for key in ("lm68_orig", "lm68_crop")}
    return image, meta, injected


def _assert_close(name: str, actual: np.ndarray, expected: np.ndarray, atol: float) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    assert err.max() <= atol, f"{name}: max abs {err.max():.3g} (mean {err.mean():.3g}) > {atol}"


def test_recon_net_matches_golden(golden_case_dir: Path, recon_net: ReconNet) -> None:
    golden = load_golden(golden_case_dir)
    coeff = recon_net.coefficients(golden["recon_input_224"])
    assert coeff.shape == (1, 257) and coeff.dtype == np.float32
    _assert_close("face3d_full_coeff_257", coeff[0], golden["face3d_full_coeff_257"], COEFF_TOL)
    source = source_coefficients(coeff, golden["trans_params_raw"])
    assert source.dtype == np.float32
    _assert_close("source_coeff_73", source, golden["source_coeff_73"], COEFF_TOL)


def test_prepare_source_with_injected_landmarks_matches_golden(golden_case_dir: Path, recon_net: ReconNet) -> None:
    image, meta, injected = _case(golden_case_dir)
    golden = load_golden(golden_case_dir)
    source = prepare_source(
        image,
        preprocess=meta["preprocess"],
        size=meta["size"],
        recon_net=recon_net,
        landmarks=injected["lm68_orig"],
        crop_landmarks=injected["lm68_crop"],
    )
    arrays = face_arrays(source)
    exact = [
        "lm68_orig",
        "lm68_crop",
        "align_rsize_wh",
        "crop_box_xyxy",
        "quad_lx_ly_rx_ry",
        "crop_info_size_wh",
        "cropped_hw_before_resize",
        "recon_lm68_flipped_in",
    ]
    for name in exact:
        np.testing.assert_array_equal(arrays[name], golden[name], err_msg=name)
    np.testing.assert_allclose(arrays["trans_params_raw"], golden["trans_params_raw"], rtol=1e-12, atol=0)
    for name in ("crop_image", "recon_input_224"):
        assert arrays[name].dtype == np.uint8
        _assert_close(name, arrays[name], golden[name], 1)  # <= 1 level
    _assert_close("recon_lm68_224", arrays["recon_lm68_224"], golden["recon_lm68_224"], 1e-4)
    for name in ("face3d_full_coeff_257", "source_full_3dmm_257", "source_coeff_73"):
        _assert_close(name, arrays[name], golden[name], COEFF_TOL)
    assert source.num_faces is None  # nothing was detected


class _ScriptedLandmarker:
    """Stands in for FaceLandmarker: returns given landmarks and records how it was called."""

    def __init__(self, *answers: np.ndarray) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[tuple[int, ...], bool]] = []

    def detect(self, image_rgb: np.ndarray, *, image_name: str = "", rgb_as_bgr: bool = False) -> FaceLandmarks:
        self.calls.append((image_rgb.shape, rgb_as_bgr))
        return FaceLandmarks(self.answers.pop(0), (0.0, 0.0, 1.0, 1.0), 0.99, num_faces=3)


def test_prepare_source_detects_twice_like_the_original(reference_dir: Path, recon_net: ReconNet) -> None:
    case_dir = reference_dir / "golden" / "crop_people0_256"
    image, _, injected = _case(case_dir)
    golden = load_golden(case_dir)
    landmarker = _ScriptedLandmarker(injected["lm68_orig"], injected["lm68_crop"])
    source = prepare_source(image, preprocess="crop", size=256, recon_net=recon_net, landmarker=landmarker)  # type: ignore[arg-type]
    # First call on the original image (RGB handed to the detector as if BGR, as upstream), then on the crop.
    assert landmarker.calls == [(image.shape, True), ((256, 256, 3), False)]
    assert source.num_faces == 3
    _assert_close("source_coeff_73", source.source_coeff, golden["source_coeff_73"], COEFF_TOL)


def test_prepare_source_resize_mode(reference_dir: Path, recon_net: ReconNet) -> None:
    case_dir = reference_dir / "golden" / "crop_people0_256"
    image, _, injected = _case(case_dir)
    landmarker = _ScriptedLandmarker(injected["lm68_crop"])
    source = prepare_source(image, preprocess="resize", size=128, recon_net=recon_net, landmarker=landmarker)  # type: ignore[arg-type]
    assert landmarker.calls == [((128, 128, 3), False)]  # no detection on the original image in resize mode
    np.testing.assert_array_equal(source.crop_image, cv2.resize(image, (128, 128)))
    assert source.crop.paste_box_xyxy == (0, 0, image.shape[1], image.shape[0])
    assert source.landmarks_orig is None and source.crop.geometry is None
    assert source.trans_params[:2].tolist() == [128, 128]
    assert source.source_coeff.shape == (1, 73) and np.all(np.isfinite(source.source_coeff))


def test_prepare_source_input_errors(recon_net: ReconNet) -> None:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="no landmarker"):
        prepare_source(image, preprocess="crop", size=64, recon_net=recon_net)
    with pytest.raises(ValueError, match="no landmarker"):
        prepare_source(image, preprocess="resize", size=64, recon_net=recon_net)
    with pytest.raises(ValueError, match=r"crop_landmarks must have shape \(68, 2\)"):
        prepare_source(image, preprocess="resize", size=64, recon_net=recon_net, crop_landmarks=np.zeros((5, 2)))
    with pytest.raises(ImageError):
        prepare_source(image[..., 0], preprocess="resize", size=64, recon_net=recon_net)


def test_recon_net_rejects_mismatched_checkpoint(checkpoint: dict[str, torch.Tensor]) -> None:
    broken = {k: v for k, v in checkpoint.items() if k.startswith("face_3drecon.")}
    del broken["face_3drecon.final_layers.6.bias"]
    broken["face_3drecon.final_layers.0.weight"] = torch.zeros(81, 2048, 1, 1)
    with pytest.raises(CheckpointError) as info:
        ReconNet(broken, source="my.safetensors")
    message = str(info.value)
    assert "my.safetensors[face_3drecon.]" in message
    assert "final_layers.6.bias" in message
    assert "final_layers.0.weight" in message and "[81, 2048, 1, 1]" in message and "[80, 2048, 1, 1]" in message


def test_source_coefficients_layout() -> None:
    coeff = np.arange(257, dtype=np.float32)[None]
    trans = np.array([256, 256, 1.5, 120.25, 99.125])
    source = source_coefficients(coeff, trans)
    assert source.shape == (1, 73) and source.dtype == np.float32
    np.testing.assert_array_equal(source[0, :64], np.arange(80, 144))
    np.testing.assert_array_equal(source[0, 64:67], [224, 225, 226])
    np.testing.assert_array_equal(source[0, 67:70], [254, 255, 256])
    np.testing.assert_array_equal(source[0, 70:], np.float32([1.5, 120.25, 99.125]))


@pytest.mark.slow
def test_prepare_source_with_the_synthetic_landmarker(
    reference_dir: Path, synthetic_checkpoints: Path, recon_net: ReconNet
) -> None:
    # Random detector weights score hundreds of garbage boxes as faces; the pipeline must still run through
    # (largest usable box, finite landmarks) and report how many faces it saw.
    from sadtalker.face import FaceLandmarker

    image, _, _ = _case(reference_dir / "golden" / "crop_people0_256")
    landmarker = FaceLandmarker(synthetic_checkpoints)
    source = prepare_source(image, preprocess="crop", size=256, recon_net=recon_net, landmarker=landmarker)
    assert source.num_faces is not None and source.num_faces > 1
    assert source.landmarks_orig is not None and np.all(np.isfinite(source.landmarks_orig))
    assert source.crop_image.shape == (256, 256, 3)
    assert source.source_coeff.shape == (1, 73) and np.all(np.isfinite(source.source_coeff))
