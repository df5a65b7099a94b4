"""Fast unit tests of the render stage on tiny tensors (no checkpoints needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sadtalker.render.blocks import SpectralNormConv2d, coordinate_grid_3d
from sadtalker.render.dense_motion import DenseMotionConfig
from sadtalker.render.generator import GeneratorConfig
from sadtalker.render.keypoints import KPDetectorConfig, gaussian_kernel_2d
from sadtalker.render.mapping import MappingConfig, MappingNet
from sadtalker.render.renderer import frames_to_uint8, load_mapping_state
from sadtalker.render.transform import logits_to_degrees, rotation_matrix, transform_keypoints
from sadtalker.render.windows import build_semantics, frame_windows
from sadtalker.weights import CheckpointError, load_strict


def _spectral_state(out_ch: int, in_ch: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(out_ch, generator=g)
    v = torch.randn(in_ch * k * k, generator=g)
    return {
        "weight_orig": torch.randn(out_ch, in_ch, k, k, generator=g),
        "bias": torch.randn(out_ch, generator=g),
        "weight_u": u / u.norm(),
        "weight_v": v / v.norm(),
    }


def test_spectral_norm_weight_is_weight_orig_over_u_w_v() -> None:
    state = _spectral_state(6, 4, 3, seed=1)
    conv = SpectralNormConv2d(4, 6, 3, padding=1)
    conv.load_state_dict(state)
    w2 = state["weight_orig"].double().reshape(6, -1)
    sigma = state["weight_u"].double() @ (w2 @ state["weight_v"].double())
    expected = state["weight_orig"].double() / sigma
    torch.testing.assert_close(conv.normalised_weight().double(), expected, rtol=1e-6, atol=1e-7)


def test_spectral_norm_matches_torch_eval_mode_without_power_iteration() -> None:
    """Same state dict in torch's own spectral_norm (eval: no power iteration) gives the same conv output."""
    state = _spectral_state(5, 3, 3, seed=2)
    ours = SpectralNormConv2d(3, 5, 3, padding=1)
    ours.load_state_dict(state)
    reference = nn.utils.spectral_norm(nn.Conv2d(3, 5, 3, padding=1))
    reference.load_state_dict(state)
    reference.eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=0)
    # eval mode must not have moved the stored vectors
    torch.testing.assert_close(reference.weight_u, state["weight_u"], rtol=0, atol=0)


def test_spectral_norm_conv_s_has_no_bias_key() -> None:
    assert set(SpectralNormConv2d(4, 2, 1, bias=False).state_dict()) == {"weight_orig", "weight_u", "weight_v"}


def test_load_strict_names_the_key_with_a_wrong_shape() -> None:
    net = MappingNet(MappingConfig(coeff_nc=70))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc_t.weight"] = torch.zeros(4, 1024)
    with pytest.raises(CheckpointError) as err:
        load_strict(net, state, "mapping_00229-model.pth.tar['mapping']")
    message = str(err.value)
    assert "fc_t.weight" in message and "[4, 1024]" in message and "[3, 1024]" in message
    assert "mapping_00229-model.pth.tar" in message


def test_load_strict_rejects_missing_and_unexpected_keys() -> None:
    net = MappingNet(MappingConfig(coeff_nc=70))
    state = dict(net.state_dict())
    state["extra.weight"] = state.pop("fc_exp.bias")
    with pytest.raises(CheckpointError, match=r"missing key 'fc_exp.bias'.*unexpected key 'extra.weight'"):
        load_strict(net, state, "x")


def test_mapping_checkpoint_needs_mapping_and_epoch(tmp_path: Path) -> None:
    state = MappingNet(MappingConfig(coeff_nc=70)).state_dict()
    good = tmp_path / "mapping_00229-model.pth.tar"
    torch.save({"mapping": state, "epoch": 229, "optimizer_mapping": {}}, good)
    loaded, name = load_mapping_state(good)
    assert set(loaded) == set(state) and "mapping_00229-model.pth.tar" in name
    bad = tmp_path / "no_epoch.pth.tar"
    torch.save({"mapping": state}, bad)
    with pytest.raises(CheckpointError, match="epoch"):
        load_mapping_state(bad)
    assert set(load_mapping_state(state)[0]) == set(state)  # a bare state dict is accepted too


def test_anti_alias_kernel() -> None:
    kernel = gaussian_kernel_2d(0.25, 3)
    assert kernel.shape == (3, 1, 13, 13)
    torch.testing.assert_close(kernel.sum(dim=(1, 2, 3)), torch.ones(3))
    assert kernel[0, 0, 6, 6] == kernel.max()  # centred
    torch.testing.assert_close(kernel[0, 0], kernel[0, 0].T, rtol=0, atol=0)
    # separable Gaussian, sigma 1.5
    ratio = kernel[0, 0, 6, 7] / kernel[0, 0, 6, 6]
    assert ratio.item() == pytest.approx(np.exp(-1 / (2 * 1.5**2)), rel=1e-6)


def test_coordinate_grid_order_and_range() -> None:
    grid = coordinate_grid_3d(2, 3, 5, dtype=torch.float32, device=torch.device("cpu"))
    assert grid.shape == (2, 3, 5, 3)
    assert grid[0, 0, 0].tolist() == [-1.0, -1.0, -1.0] and grid[1, 2, 4].tolist() == [1.0, 1.0, 1.0]
    assert grid[0, 0, 1].tolist() == [-0.5, -1.0, -1.0]  # x varies along width
    assert grid[0, 1, 0].tolist() == [-1.0, 0.0, -1.0]  # y along height


def test_logits_to_degrees_is_the_softmax_expectation() -> None:
    logits = torch.full((2, 66), -1e4)
    logits[0, 33] = 0.0  # bin 33 -> 3*33-99 = 0 degrees
    logits[1, 40] = 0.0
    logits[1, 41] = 0.0  # half/half -> 3*40.5-99
    torch.testing.assert_close(logits_to_degrees(logits), torch.tensor([0.0, 22.5]))


def test_rotation_matrix_axes_and_order() -> None:
    zero = torch.zeros(1)
    angle = torch.tensor([30.0])
    rad = 30 / 180 * 3.14  # upstream's pi
    c, s = np.cos(rad), np.sin(rad)
    pitch = rotation_matrix(zero, angle, zero)[0].numpy()
    yaw = rotation_matrix(angle, zero, zero)[0].numpy()
    roll = rotation_matrix(zero, zero, angle)[0].numpy()
    np.testing.assert_allclose(pitch, [[1, 0, 0], [0, c, -s], [0, s, c]], atol=1e-6)
    np.testing.assert_allclose(yaw, [[c, 0, s], [0, 1, 0], [-s, 0, c]], atol=1e-6)
    np.testing.assert_allclose(roll, [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=1e-6)
    combined = rotation_matrix(angle, angle * 2, angle * 3)[0].double().numpy()
    p2 = rotation_matrix(zero, angle * 2, zero)[0].double().numpy()
    r3 = rotation_matrix(zero, zero, angle * 3)[0].double().numpy()
    np.testing.assert_allclose(combined, p2 @ yaw @ r3, atol=1e-6)  # pitch @ yaw @ roll
    np.testing.assert_allclose(combined @ combined.T, np.eye(3), atol=1e-6)


def test_transform_keypoints_zeroes_x_and_z_of_t_and_adds_exp() -> None:
    from sadtalker.render.mapping import MappingOutput

    logits = torch.full((2, 66), -1e4)
    logits[:, 33] = 0.0  # all angles 0 -> identity rotation
    t = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    exp = torch.arange(2 * 45, dtype=torch.float32).view(2, 45) / 100
    pose = MappingOutput(logits, logits, logits, t, exp)
    kp = torch.randn(1, 15, 3, generator=torch.Generator().manual_seed(0))
    out = transform_keypoints(kp, pose)
    expected = kp + torch.tensor([[0.0, 2.0, 0.0], [0.0, 5.0, 0.0]]).unsqueeze(1) + exp.view(2, 15, 3)
    torch.testing.assert_close(out, expected)
    assert t[0].tolist() == [1.0, 2.0, 3.0]  # the caller's tensor is not modified
    yaw = torch.tensor([90.0, 0.0])
    turned = transform_keypoints(kp, pose, yaw_degrees=yaw)
    torch.testing.assert_close(turned[1], expected[1])
    assert not torch.allclose(turned[0], expected[0])


def test_frame_windows_clamp_at_both_ends() -> None:
    coeffs = torch.arange(5, dtype=torch.float32).view(5, 1).repeat(1, 2)  # frame index in both columns
    windows = frame_windows(coeffs, radius=3)
    assert windows.shape == (5, 2, 7)
    assert windows[0, 0].tolist() == [0, 0, 0, 0, 1, 2, 3]
    assert windows[4, 1].tolist() == [1, 2, 3, 4, 4, 4, 4]
    assert windows[2, 0].tolist() == [0, 0, 1, 2, 3, 4, 4]


def _coeffs(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(frames, 70, generator=g), torch.randn(1, 73, generator=g)


def test_build_semantics_crop_mode() -> None:
    pred, src = _coeffs(4)
    sem = build_semantics(pred, src, full=False, still=False, expression_scale=2.0)
    assert sem.source.shape == (70, 27) and sem.target.shape == (4, 70, 27)
    torch.testing.assert_close(sem.source, src[0, :70].unsqueeze(1).expand(70, 27))
    centre = sem.target[:, :, 13]
    torch.testing.assert_close(centre[:, :64], pred[:, :64] * 2.0)
    torch.testing.assert_close(centre[:, 64:], pred[:, 64:])
    assert pred.abs().sum() > 0 and torch.equal(pred, _coeffs(4)[0])  # input untouched


def test_build_semantics_full_and_still() -> None:
    pred, src = _coeffs(3)
    full = build_semantics(pred, src, full=True, still=False)
    assert full.source.shape == (73, 27) and full.target.shape == (3, 73, 27)
    torch.testing.assert_close(full.target[:, 70:, 5], src[:, 70:].expand(3, 3))
    torch.testing.assert_close(full.target[:, 64:70, 13], pred[:, 64:70])
    still = build_semantics(pred, src, full=True, still=True)
    torch.testing.assert_close(still.target[:, 64:, 13], src[:, 64:].expand(3, 9))
    torch.testing.assert_close(still.target[:, :64, 13], pred[:, :64])
    still_crop = build_semantics(pred, src, full=False, still=True)
    torch.testing.assert_close(still_crop.target[:, 64:, 0], src[:, 64:70].expand(3, 6))


def test_frames_to_uint8_matches_skimage_rule() -> None:
    """skimage img_as_ubyte(float32): np.rint(np.multiply(x, 255, dtype=float32)), clipped (rint: half to even)."""
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.rand(4000, generator=g), torch.tensor([0.0, 1.0, 0.5, 1.5 / 255, 2.5 / 255, 1e-9])])
    frames = values[:4002].view(1, 3, 46, 29)
    ours = frames_to_uint8(frames).numpy()
    x = frames.permute(0, 2, 3, 1).numpy()
    expected = np.clip(np.rint(np.multiply(x, 255, dtype=np.float32)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(ours, expected)
    assert frames_to_uint8(torch.full((1, 3, 1, 1), 0.5))[0, 0, 0, 0].item() == 128  # 127.5 -> even


def test_default_configs_match_the_yaml(reference_dir: Path) -> None:
    configs = json.loads((reference_dir / "model_configs.json").read_text())["yaml"]
    for name, coeff_nc in (("facerender.yaml", 70), ("facerender_still.yaml", 73)):
        params = configs[name]["model_params"]
        common, kp, gen = params["common_params"], params["kp_detector_params"], params["generator_params"]
        kp_cfg = KPDetectorConfig()
        assert (kp_cfg.num_kp, kp_cfg.image_channel) == (common["num_kp"], common["image_channel"])
        assert not common["estimate_jacobian"]
        for key in (
            "block_expansion",
            "max_features",
            "num_blocks",
            "reshape_channel",
            "reshape_depth",
            "temperature",
            "scale_factor",
        ):
            assert getattr(kp_cfg, key) == kp[key], key
        gen_cfg = GeneratorConfig()
        for key in (
            "block_expansion",
            "max_features",
            "num_down_blocks",
            "reshape_channel",
            "reshape_depth",
            "num_resblocks",
        ):
            assert getattr(gen_cfg, key) == gen[key], key
        dm = DenseMotionConfig()
        assert dm.estimate_occlusion_map == gen["estimate_occlusion_map"]
        assert (dm.num_kp, dm.feature_channel) == (common["num_kp"], common["feature_channel"])
        for key, value in gen["dense_motion_params"].items():
            assert getattr(dm, key) == value, key
        mapping = dict(params["mapping_params"])
        assert mapping.pop("coeff_nc") == coeff_nc
        for key, value in mapping.items():
            assert getattr(MappingConfig(), key) == value, key


def test_build_semantics_accepts_arrays_and_rejects_bad_shapes() -> None:
    pred, src = _coeffs(2)
    from_np = build_semantics(pred.numpy(), src[:, :70].numpy(), full=False, still=False)
    torch.testing.assert_close(from_np.target, build_semantics(pred, src, full=False, still=False).target)
    with pytest.raises(ValueError, match="source_coeff"):
        build_semantics(pred, src[:, :70], full=True, still=False)
    with pytest.raises(ValueError, match="coeff_pred"):
        build_semantics(pred[:, :60], src, full=False, still=False)
