"""Render stage: semantics windows against the goldens, strict loading, batching.

The golden keypoints, mapping outputs and rendered frames are checked once, in test_conformance.py, on the
session's shared conformance arrays (rendering them again here cost ~25 s per run and proved nothing more).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_golden

from sadtalker.render import Renderer, build_semantics
from sadtalker.render.keypoints import gaussian_kernel_2d
from sadtalker.weights import CheckpointError

# README §6 acceptance tolerances.
SEMANTICS_ATOL = 1e-4
CROP_PARAM_RTOL = 1e-6  # crop-parameter columns 70:73 of the semantics (magnitudes ~1e2)

MAPPING_FILES = {70: "mapping_00229-model.pth.tar", 73: "mapping_00109-model.pth.tar"}


def _errors(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    return float(diff.max()), float(diff.mean())


def _report(name: str, ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    max_err, mean_err = _errors(ours, ref)
    print(f"{name}: max abs {max_err:.3e}, mean abs {mean_err:.3e}")
    return max_err, mean_err


@pytest.fixture(scope="module")
def renderers(talker) -> dict[int, Renderer]:
    """The session pipeline's 256 renderers (crop: 70 coefficients, full: 73)."""
    return talker.models[256].renderers


def test_windows_match_golden(golden_case_dir: Path) -> None:
    golden = load_golden(golden_case_dir)
    case = json.loads((golden_case_dir / "case.json").read_text())
    semantics = build_semantics(
        torch.from_numpy(golden["coeff_pred_70"]),
        torch.from_numpy(golden["source_coeff_73"]),
        full="full" in case["preprocess"].lower(),
        still=case["still"],
        expression_scale=case["expression_scale"],
    )
    for name, ours in (("source_semantics", semantics.source), ("target_semantics", semantics.target)):
        ref = golden[name]
        assert ours.shape == ref.shape, name
        ours_np = ours.numpy()
        _report(name, ours_np, ref)
        # The crop columns (70:73, ~1e2 px) are held to a relative bound; everything else to the absolute one.
        assert _errors(ours_np[..., :70, :], ref[..., :70, :])[0] <= SEMANTICS_ATOL, name
        np.testing.assert_allclose(ours_np[..., 70:, :], ref[..., 70:, :], rtol=CROP_PARAM_RTOL, atol=0)


def test_anti_alias_buffer_equals_the_stored_one(checkpoint_256: dict[str, torch.Tensor]) -> None:
    torch.testing.assert_close(gaussian_kernel_2d(0.25, 3), checkpoint_256["kp_extractor.down.weight"], rtol=0, atol=0)


def test_wrong_shape_in_safetensors_names_the_key(
    checkpoint_256: dict[str, torch.Tensor], synthetic_checkpoints: Path
) -> None:
    broken = dict(checkpoint_256)
    key = "generator.decoder.up_0.conv_s.weight_v"
    broken[key] = torch.zeros(7)
    with pytest.raises(CheckpointError) as err:
        Renderer.from_checkpoint(broken, synthetic_checkpoints / MAPPING_FILES[70], coeff_nc=70, source_name="x.st")
    message = str(err.value)
    assert "decoder.up_0.conv_s.weight_v" in message and "[7]" in message and "[512]" in message
    assert "x.st[generator.]" in message


def test_mapping_file_for_the_other_coeff_nc_is_rejected(
    checkpoint_256: dict[str, torch.Tensor], synthetic_checkpoints: Path
) -> None:
    with pytest.raises(CheckpointError, match=r"first\.0\.weight.*\[1024, 73, 7\].*\[1024, 70, 7\]"):
        Renderer.from_checkpoint(checkpoint_256, synthetic_checkpoints / MAPPING_FILES[73], coeff_nc=70)


def test_batching_does_not_change_frames(renderers: dict[int, Renderer], reference_dir: Path) -> None:
    """A frame rendered inside a batch equals the same frame rendered alone (a 128-px source keeps this quick)."""
    golden = load_golden(reference_dir / "golden" / "crop_people0_256")
    image = torch.from_numpy(golden["source_image_float"][::2, ::2]).permute(2, 0, 1).unsqueeze(0).contiguous()
    source_semantics = torch.from_numpy(golden["source_semantics"])
    targets = torch.from_numpy(golden["target_semantics"][:2])
    renderer = renderers[70]
    (pair,) = renderer.render(image, source_semantics, targets, batch_size=2)
    (alone,) = renderer.render(image, source_semantics, targets[1:], batch_size=1)
    assert pair.shape == (2, 3, 128, 128)
    max_err, _ = _report("batch 2 vs batch 1, frame 1", pair[1].numpy(), alone[0].numpy())
    # float noise only (different conv blocking per batch size); README §6 saw 2.8e-5 between thread counts
    assert max_err <= 1e-4
    assert (pair[0] - pair[1]).abs().mean() > 1e-3  # different windows give different frames
