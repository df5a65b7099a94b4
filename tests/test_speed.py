"""Speed levers (issue 10): precision modes, static-shape compilation, the encoder feeder.

Timings are never asserted here (bench/speed.py prints them); these tests pin what the levers must not change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sadtalker.compose.enhance import FaceEnhancer
from sadtalker.feeder import BackgroundFeeder
from sadtalker.options import GenerateOptions
from sadtalker.pipeline import SadTalker
from sadtalker.render.accel import StaticCompiled, compile_from_env, default_render_batch, reduced_dtype
from sadtalker.render.windows import RenderSemantics
from serving.config import ConfigError, ServingConfig

FIDELITY_FRAMES = 2
MIN_MEAN_PSNR_DB = 35.0
MIN_WORST_PSNR_DB = 30.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# -- options and configuration ----------------------------------------------------------------------------------


def test_precision_option_is_validated() -> None:
    assert GenerateOptions().precision is None  # the pipeline's default
    assert GenerateOptions(precision="fast").precision == "fast"
    with pytest.raises(ValueError, match="precision must be 'exact' or 'fast'"):
        GenerateOptions(precision="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        GenerateOptions(batch_size=0)


def test_service_reads_precision_and_compile(tmp_path: Path) -> None:
    base = {"SADTALKER_STATE_DIR": str(tmp_path), "SADTALKER_OUTPUT_DIR": str(tmp_path / "out")}
    default = ServingConfig.from_env(base)
    assert (default.precision, default.compile) == ("exact", True)
    fast = ServingConfig.from_env({**base, "SADTALKER_PRECISION": "fast", "SADTALKER_COMPILE": "0"})
    assert (fast.precision, fast.compile) == ("fast", False)
    with pytest.raises(ConfigError, match="SADTALKER_PRECISION='half' must be one of exact, fast"):
        ServingConfig.from_env({**base, "SADTALKER_PRECISION": "half"})


def test_compile_switch_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SADTALKER_COMPILE", raising=False)
    assert compile_from_env(default=True) is True
    monkeypatch.setenv("SADTALKER_COMPILE", "0")
    assert compile_from_env(default=True) is False
    monkeypatch.setenv("SADTALKER_COMPILE", "maybe")
    with pytest.raises(ValueError, match="SADTALKER_COMPILE"):
        compile_from_env(default=True)


def test_render_batch_and_reduced_dtype_per_device() -> None:
    assert default_render_batch(torch.device("cpu"), 256) == 1
    gib = 2**30
    # CUDA: half of the free memory, ~0.9 GiB per 256-px frame (4x at 512), between 1 and 16 frames.
    assert default_render_batch(torch.device("cuda"), 256, free_bytes=8 * gib) == 4
    assert default_render_batch(torch.device("cuda"), 256, free_bytes=80 * gib) == 16
    assert default_render_batch(torch.device("cuda"), 512, free_bytes=8 * gib) == 1
    assert reduced_dtype(torch.device("cuda")) == torch.float16
    assert reduced_dtype(torch.device("cpu")) == torch.bfloat16


# -- compilation ------------------------------------------------------------------------------------------------


def test_static_compiled_runs_the_graph_for_warmed_shapes_only() -> None:
    """A tiny conv/BN/activation net compiled with frozen weights: same result as eager for the warmed shape,
    and any other shape runs eagerly instead of compiling in the middle of a job."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2)).eval()
    compiled = StaticCompiled(net, "tiny")
    x = torch.randn(1, 3, 16, 16)
    compiled.warm_up(x)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    eager_calls: list[tuple[int, ...]] = []
    compiled.fn = lambda t: (eager_calls.append(tuple(t.shape)), net(t))[1]  # spy on the eager fallback
    with torch.inference_mode():
        x = x.clone()  # an inference tensor, as jobs pass
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)
        assert eager_calls == []  # the compiled graph ran
        other = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(compiled(other), net(other), rtol=0, atol=0)
        assert eager_calls == [(2, 3, 16, 16)]  # eager, exactly
        compiled.enabled = False
        compiled(x)
        assert eager_calls[-1] == (1, 3, 16, 16)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled after warm-up
    assert compiled.fallbacks == 0


def _runs_compiled_graph(call: Callable[[], object]) -> bool:
    """Whether ``call`` ran a torch.compile'd graph: dynamo marks that in the profiler (an eager fallback,
    including dynamo's own "eager_on_recompile", leaves no such mark)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    return any(event.name.startswith("Torch-Compiled Region") for event in prof.events())


def test_static_compiled_takes_inputs_in_any_layout_and_reports_guard_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Dynamo guards on strides and on inference-ness, not only shapes: facexlib hands ParseNet a transposed
    (non-contiguous) view, which once made the compiled ParseNet fall back to eager on every call, silently.
    Such inputs now run the graph; a guard that still fails runs eagerly, counted and logged."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.2)).eval()
    gain = {"value": 2.0}
    compiled = StaticCompiled(lambda t: net(t) * gain["value"], "tiny")
    compiled.warm_up(torch.randn(1, 3, 16, 16))
    eager_calls: list[tuple[int, ...]] = []
    compiled.fn = lambda t: (eager_calls.append(tuple(t.shape)), net(t) * gain["value"])[1]
    hwc = torch.randn(16, 16, 3)
    transposed = hwc.permute(2, 0, 1).unsqueeze(0)  # as img2tensor(...).unsqueeze(0): strides (.., 1, 48, 3)
    assert not transposed.is_contiguous() and not transposed.is_inference()
    with torch.inference_mode():
        expected = net(transposed.contiguous()) * 2.0
        torch.testing.assert_close(compiled(transposed), expected, rtol=1e-5, atol=1e-5)
        assert _runs_compiled_graph(lambda: compiled(transposed))
        assert eager_calls == [] and compiled.fallbacks == 0
        gain["value"] = 3.0  # a guarded global changed: the graph no longer applies
        with caplog.at_level("WARNING", logger="sadtalker.render.accel"):
            result = compiled(transposed)
        torch.testing.assert_close(result, net(transposed.contiguous()) * 3.0, rtol=1e-5, atol=1e-5)
        assert eager_calls == [(1, 3, 16, 16)] and compiled.fallbacks == 1
        assert "tiny: compiled graph not usable for this call" in caplog.text


@pytest.mark.slow
def test_compiled_renderer_matches_eager_and_pads_the_last_batch(synthetic_checkpoints: Path) -> None:
    """The real per-frame graph compiled at 128 px for batches of 2; 3 frames (last batch padded) == eager."""
    talker = SadTalker(synthetic_checkpoints, "cpu", sizes=(256,), enhancer=False, face_detection=False)
    renderer = talker.models[256].renderers[70]
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 128, 128, generator=gen)
    source, target = 0.1 * torch.randn(70, 27, generator=gen), 0.1 * torch.randn(3, 70, 27, generator=gen)
    eager = torch.cat(list(renderer.render(image, source, target, batch_size=2)))
    renderer.compile(128, 2, "exact")
    assert renderer.compiled_batch_sizes("exact") == {2}
    compiled = torch.cat(list(renderer.render(image, source, target, batch_size=2)))
    assert compiled.shape == eager.shape == (3, 3, 128, 128)
    assert (compiled - eager).abs().max().item() <= 1e-4


# -- fast mode fidelity -----------------------------------------------------------------------------------------


def test_fast_mode_rendered_frames_stay_close_to_exact(
    golden_case_dir: Path, talker: SadTalker, conformance_arrays: dict[str, np.ndarray]
) -> None:
    """Fast (bf16) vs exact rendered frames of a public golden case: >= 35 dB mean and >= 30 dB every frame.

    The exact frames are the session's conformance render of the case (held to the golden frames within 2
    levels by test_conformance), so only the fast frames are rendered here.
    """
    from sadtalker.audio import compute_audio_features
    from sadtalker.conformance import Case
    from sadtalker.media import load_audio, load_image

    case = Case.read(golden_case_dir)
    options = replace(case.options, enhancer="none", seed=0, precision="fast")
    face = talker.prepare_face(load_image(case.image), options, case.inputs["lm68_orig"], case.image.name)
    motion = talker.predict_motion(compute_audio_features(load_audio(case.audio)), face, options, seed=0)
    semantics = talker.semantics(motion, face, options)
    semantics = RenderSemantics(semantics.source, semantics.target[:FIDELITY_FRAMES])
    fast = np.concatenate(list(talker.render_frames(face, semantics, options)))
    exact = conformance_arrays["render_uint8"][:FIDELITY_FRAMES]
    values = [_psnr(a, b) for a, b in zip(fast, exact, strict=True)]
    print(f"{golden_case_dir.name}: fast vs exact PSNR mean {np.mean(values):.1f} dB, worst {min(values):.1f} dB")
    assert len(values) == FIDELITY_FRAMES
    assert not np.array_equal(fast, exact)  # fast really ran in reduced precision
    assert np.mean(values) >= MIN_MEAN_PSNR_DB and min(values) >= MIN_WORST_PSNR_DB


# -- enhancer -----------------------------------------------------------------------------------------------------


def test_mask_parser_gives_parsenets_logits(talker: SadTalker) -> None:
    """ParseNet's unused image head is skipped: the parsing logits are bit-identical."""
    enhancer = talker.enhancer  # the session's (read only)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        full = enhancer.parser.net(x)[0]
        (mask_only,) = enhancer.parser(x)
    torch.testing.assert_close(mask_only, full, rtol=0, atol=0)


def test_compiled_mask_parser_runs_its_graph_on_facexlibs_input() -> None:
    """ParseNet compiled at load must run compiled on the tensor facexlib's paste-back builds (img2tensor of an
    HWC crop, normalised in place, unsqueezed), not fall back to eager.  A narrow ParseNet keeps it cheap."""
    from basicsr.utils import img2tensor
    from test_compose_enhance import _narrow_parser
    from torchvision.transforms.functional import normalize

    from sadtalker.compose.enhance import _MaskParser

    parser = _MaskParser(_narrow_parser(), torch.device("cpu"))
    parser.compile("exact")
    compiled = parser._compiled["exact"]
    crop = np.random.default_rng(0).integers(0, 256, (512, 512, 3), np.uint8)
    with torch.inference_mode():
        face = img2tensor(crop.astype("float32") / 255.0, bgr2rgb=True, float32=True)
        normalize(face, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), inplace=True)
        face = torch.unsqueeze(face, 0)
        assert not face.is_contiguous()  # the layout that used to defeat the compiled graph
        (logits,) = parser(face)
        assert _runs_compiled_graph(lambda: parser(face))
        eager = parser.logits(face.contiguous())
    assert compiled.fallbacks == 0
    assert logits.shape == (1, 19, 512, 512)
    torch.testing.assert_close(logits, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_exact_enhancer_within_two_levels_of_the_plain_path(synthetic_checkpoints: Path) -> None:
    """Exact-mode enhancement as the service runs it (GFPGAN and ParseNet compiled at load, faces one at a time,
    mask-only ParseNet) vs the plain path (eager, faces batched, full ParseNet), same seed: every pixel within 2
    levels.  Full-size GFPGAN + ParseNet, two faces; the compiled graphs must really have run."""
    from test_compose_enhance import _frames

    enhancer = FaceEnhancer(synthetic_checkpoints, "cpu", batch_size=2, upscale=2)
    enhancer.compile("exact")
    frames, landmarks = _frames()
    per_frame = [[points] for points in landmarks]
    compiled = [enhancer._gfpgan_compiled["exact"], enhancer.parser._compiled["exact"]]
    result: dict[str, np.ndarray] = {}

    def run_exact() -> None:
        result["new"] = enhancer.enhance(frames, landmarks=per_frame, generator=torch.Generator().manual_seed(3))

    assert _runs_compiled_graph(run_exact)
    assert [c.fallbacks for c in compiled] == [0, 0]
    new = result["new"]
    enhancer.face_batch, enhancer.helper.face_parse = 2, enhancer.parser.net
    enhancer._gfpgan_compiled.clear()  # the plain path: eager GFPGAN on the batch
    plain = enhancer.enhance(frames, landmarks=per_frame, generator=torch.Generator().manual_seed(3))
    assert new.shape == plain.shape == (2, 512, 512, 3)
    assert np.abs(new.astype(np.int16) - plain).max() <= 2


# -- encoder feeder -----------------------------------------------------------------------------------------------


def test_feeder_keeps_order_and_bounds_the_queue() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def sink(item: int) -> None:
        gate.wait(5)
        seen.append(item)

    with BackgroundFeeder(sink, depth=2) as feeder:
        started = time.perf_counter()
        for i in range(2):
            feeder.put(i)
        assert time.perf_counter() - started < 1  # two queued items never block
        gate.set()
        for i in range(2, 6):
            feeder.put(i)
    assert seen == list(range(6))


def test_feeder_reraises_the_sink_error_in_the_caller() -> None:
    def sink(item: int) -> None:
        if item == 1:
            raise RuntimeError("ffmpeg died")

    feeder = BackgroundFeeder(sink)
    feeder.put(0)
    feeder.put(1)
    with pytest.raises(RuntimeError, match="ffmpeg died"):
        for i in range(2, 50):
            feeder.put(i)
        feeder.close()


def test_feeder_does_not_mask_the_callers_exception() -> None:
    with pytest.raises(KeyError), BackgroundFeeder(lambda item: None) as feeder:
        feeder.put(1)
        raise KeyError("render failed")


def test_fast_copy_keeps_the_original_and_matches_autocast() -> None:
    """Fast mode's weight copy (bf16, channels-last convolutions) computes what autocast on the original does,
    and leaves the original (exact mode's weights) untouched."""
    from sadtalker.render.accel import fast_copy, to_channels_last

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)
    ).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copy = fast_copy(net, torch.bfloat16)
    for key, value in net.state_dict().items():
        assert value.dtype == before[key].dtype and value.is_contiguous()
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    conv = copy[0]
    assert conv.weight.dtype == torch.bfloat16 and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert copy[1].weight.dtype == torch.float32  # only convolution weights change
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(x).float()
        got = copy(to_channels_last(x)).float()
    assert got.is_contiguous(memory_format=torch.channels_last)  # activations stayed NHWC
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_compiled_fast_renderer_matches_eager_fast(synthetic_checkpoints: Path) -> None:
    """Fast mode's per-frame graph (bf16 channels-last weight copy on CPU) compiled at 128 px: the graph runs
    (no fallback, nothing recompiled) and stays close to the eager fast path."""
    talker = SadTalker(synthetic_checkpoints, "cpu", sizes=(256,), enhancer=False, face_detection=False)
    renderer = talker.models[256].renderers[70]
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 128, 128, generator=gen)
    source, target = 0.1 * torch.randn(70, 27, generator=gen), 0.1 * torch.randn(2, 70, 27, generator=gen)
    eager = torch.cat(list(renderer.render(image, source, target, batch_size=1, precision="fast")))
    renderer.compile(128, 1, "fast")
    assert renderer.compiled_batch_sizes("fast") == {1}
    calls: list[int] = []
    compiled = renderer._compiled["fast"]
    compiled.fn = lambda *xs: (calls.append(1), renderer._animate_fast(*xs))[1]  # spy on the eager fallback
    frames = torch.cat(list(renderer.render(image, source, target, batch_size=1, precision="fast")))
    assert calls == []  # the compiled graph ran for both frames
    assert frames.shape == eager.shape == (2, 3, 128, 128)
    # bf16: the two paths round differently; as close as fast mode must be to exact (>= 35 dB).
    mse = torch.mean((frames.double() - eager.double()) ** 2).item()
    assert 10 * np.log10(1 / max(mse, 1e-20)) >= MIN_MEAN_PSNR_DB


def test_compile_without_a_toolchain_fails_before_loading_models(
    synthetic_checkpoints: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library (CLI included) refuses compile=True up front, in one line, when torch.compile cannot build
    kernels; the service's start-up check uses the same probe (tests/test_serving_jobs.py)."""
    import sadtalker.pipeline
    from sadtalker.errors import CompileUnavailableError

    loaded: list[int] = []
    monkeypatch.setattr(sadtalker.pipeline, "load_size_models", lambda *args, **kwargs: loaded.append(1))
    monkeypatch.setattr(sadtalker.pipeline, "compile_toolchain_problem", lambda: "Python's C headers are missing")
    with pytest.raises(CompileUnavailableError, match="compile=True but Python's C headers are missing; or load"):
        SadTalker(synthetic_checkpoints, "cpu", sizes=(256,), enhancer=False, face_detection=False, compile=True)
    assert loaded == []  # nothing loaded before the refusal
