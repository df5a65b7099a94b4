"""The render stage: source image + coefficient windows -> video frames.

Usage::

    state = read_safetensors(ckpt_dir / "SadTalker_V0.0.2_256.safetensors")  # read once, shared by all stages
    renderer = Renderer.from_checkpoint(state, ckpt_dir / "mapping_00229-model.pth.tar", coeff_nc=70, device="cpu")
    for frames in renderer.render(image, semantics.source, semantics.target, batch_size=2):
        ...  # frames: (B, 3, S, S) float in [0, 1] on the renderer's device

The output size follows the source image size (256 or 512; the network is the same).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from sadtalker.render.accel import (
    FastWeights,
    Precision,
    StaticCompiled,
    autocast,
    check_precision,
    fast_channels_last,
    to_channels_last,
)
from sadtalker.render.generator import GeneratorConfig, OcclusionAwareSPADEGenerator, SourceFeatures
from sadtalker.render.keypoints import KPDetector, KPDetectorConfig
from sadtalker.render.mapping import MappingConfig, MappingNet, MappingOutput
from sadtalker.render.transform import transform_keypoints
from sadtalker.weights import CheckpointError, load_strict, read_torch, take_prefix

# The source image side must survive /4 (anti-alias downsampling) and then five 2x poolings in the kp detector.
SIZE_MULTIPLE = 128


@dataclass(frozen=True)
class PoseOverride:
    """Per-frame head angles in degrees (T,) that replace the predicted ones (upstream input_yaw/pitch/roll)."""

    yaw: torch.Tensor | None = None
    pitch: torch.Tensor | None = None
    roll: torch.Tensor | None = None

    def select(self, frames: slice, device: torch.device) -> PoseOverride:
        """The angles of ``frames``, as float32 on ``device``."""

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[frames].to(device=device, dtype=torch.float32)

        return PoseOverride(pick(self.yaw), pick(self.pitch), pick(self.roll))


@dataclass(frozen=True)
class SourceState:
    """Everything derived from the source image and its coefficients; computed once per video."""

    image: torch.Tensor  # (1, 3, S, S) float32 in [0, 1]
    kp_canonical: torch.Tensor  # (1, K, 3) keypoint detector output
    pose: MappingOutput  # raw mapping outputs of the source window (batch 1)
    kp_source: torch.Tensor  # (1, K, 3) canonical keypoints posed like the source
    features: SourceFeatures  # generator encoder output


@dataclass(frozen=True)
class DrivingState:
    """Per-frame driving signal for a batch of B frames."""

    pose: MappingOutput  # raw mapping outputs (t before the x/z zeroing)
    kp_driving: torch.Tensor  # (B, K, 3)


def load_mapping_state(mapping: str | Path | Mapping) -> tuple[dict[str, torch.Tensor], str]:
    """The mapping-net state dict from a ``mapping_*.pth.tar`` path, its loaded dict, or a bare state dict.

    Returns (state, source name for error messages).  Like upstream, a checkpoint must hold ``'mapping'`` and
    ``'epoch'``.
    """
    if isinstance(mapping, str | Path):
        name = Path(mapping).name
        checkpoint = read_torch(mapping)
    else:
        name, checkpoint = "mapping checkpoint", mapping
        if "mapping" not in checkpoint:  # already the bare state dict
            return dict(checkpoint), "mapping state dict"
    if not isinstance(checkpoint, Mapping) or "mapping" not in checkpoint or "epoch" not in checkpoint:
        raise CheckpointError(f"{name}: expected a dict with 'mapping' and 'epoch' entries")
    return dict(checkpoint["mapping"]), f"{name}['mapping']"


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) float in [0, 1] -> (B, S, S, 3) uint8, exactly like skimage ``img_as_ubyte`` on float32.

    skimage multiplies by 255 in float32, rounds half to even (np.rint) and clips to [0, 255]; torch.round also
    rounds half to even.
    """
    scaled = frames.permute(0, 2, 3, 1).to(torch.float32) * 255
    return torch.round(scaled).clamp_(0, 255).to(torch.uint8)


class Renderer:
    """Keypoint detector + mapping net + generator, in eval mode on one device."""

    def __init__(
        self,
        kp_detector: KPDetector,
        generator: OcclusionAwareSPADEGenerator,
        mapping: MappingNet,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.kp_detector = kp_detector
        self.generator = generator
        self.mapping = mapping
        for module in (kp_detector, generator, mapping):
            module.eval().requires_grad_(False).to(self.device)
        self.coeff_nc: int = cast(nn.Conv1d, mapping.first[0]).in_channels
        # Per precision: the per-frame network (dense motion + generator), compiled for static shapes by compile().
        self._compiled: dict[Precision, StaticCompiled] = {}
        self._fast = FastWeights(generator, self.device)  # the generator's fast-mode weights (built on first use)

    @classmethod
    def from_checkpoint(
        cls,
        safetensors_state: Mapping[str, torch.Tensor],
        mapping: str | Path | Mapping,
        *,
        coeff_nc: int,
        device: torch.device | str = "cpu",
        source_name: str = "SadTalker safetensors",
        kp_config: KPDetectorConfig | None = None,
        generator_config: GeneratorConfig | None = None,
    ) -> Renderer:
        """Build and strictly load the three networks.

        ``safetensors_state``: the already-read ``SadTalker_V0.0.2_{256,512}.safetensors`` dict (prefixes
        ``kp_extractor.`` and ``generator.`` are used).  ``mapping``: path / loaded dict of
        ``mapping_00229-model.pth.tar`` (coeff_nc 70) or ``mapping_00109-model.pth.tar`` (coeff_nc 73).
        """
        kp_detector = KPDetector(kp_config)
        generator = OcclusionAwareSPADEGenerator(generator_config)
        mapping_net = MappingNet(MappingConfig(coeff_nc=coeff_nc))
        load_strict(kp_detector, take_prefix(safetensors_state, "kp_extractor"), f"{source_name}[kp_extractor.]")
        load_strict(generator, take_prefix(safetensors_state, "generator"), f"{source_name}[generator.]")
        mapping_state, mapping_name = load_mapping_state(mapping)
        load_strict(mapping_net, mapping_state, mapping_name)
        return cls(kp_detector, generator, mapping_net, device)

    # -- stages (each usable on its own, e.g. by a conformance runner) ---------------------------------------------

    def _check_semantics(self, semantics: torch.Tensor, name: str) -> None:
        if semantics.shape[-2] != self.coeff_nc:
            raise ValueError(
                f"{name} has {semantics.shape[-2]} coefficient rows but the mapping net expects {self.coeff_nc} "
                "(70: mapping_00229 for crop/resize, 73: mapping_00109 for full)"
            )

    @torch.inference_mode()
    def prepare_source(self, source_image: torch.Tensor, source_semantics: torch.Tensor) -> SourceState:
        """``source_image`` (1, 3, S, S) in [0, 1]; ``source_semantics`` (C, 27) or (1, C, 27)."""
        if source_image.ndim != 4 or source_image.shape[:2] != (1, 3) or source_image.shape[2] != source_image.shape[3]:
            raise ValueError(f"source_image must be (1, 3, S, S), got {tuple(source_image.shape)}")
        if source_image.shape[2] % SIZE_MULTIPLE:
            raise ValueError(f"source image size {source_image.shape[2]} is not a multiple of {SIZE_MULTIPLE}")
        self._check_semantics(source_semantics, "source_semantics")
        image = source_image.to(self.device, torch.float32)
        window = source_semantics.to(self.device, torch.float32).reshape(1, *source_semantics.shape[-2:])

        kp_canonical = self.kp_detector(image)
        pose = self.mapping(window)
        kp_source = transform_keypoints(kp_canonical, pose)
        features = self.generator.encode_source(image)
        return SourceState(image, kp_canonical, pose, kp_source, features)

    @torch.inference_mode()
    def drive(
        self, source: SourceState, target_semantics: torch.Tensor, pose_override: PoseOverride | None = None
    ) -> DrivingState:
        """Driving keypoints for a batch of windows ``target_semantics`` (B, C, 27).

        ``pose_override`` holds (B,) angles for this batch (see :meth:`PoseOverride.select`).
        """
        self._check_semantics(target_semantics, "target_semantics")
        pose = self.mapping(target_semantics.to(self.device, torch.float32))
        override = pose_override or PoseOverride()
        kp_driving = transform_keypoints(
            source.kp_canonical,
            pose,
            yaw_degrees=override.yaw,
            pitch_degrees=override.pitch,
            roll_degrees=override.roll,
        )
        return DrivingState(pose, kp_driving)

    def _animate_exact(
        self, feature_3d: torch.Tensor, motion_feature: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> torch.Tensor:
        return self.generator.animate(SourceFeatures(feature_3d, motion_feature), kp_source, kp_driving)

    def _animate_fast(
        self, feature_3d: torch.Tensor, motion_feature: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> torch.Tensor:
        # Reduced precision for the whole per-frame network except the output, which is returned as float32.
        if fast_channels_last(self.device):
            feature_3d, motion_feature = to_channels_last(feature_3d), to_channels_last(motion_feature)
        generator = cast(OcclusionAwareSPADEGenerator, self._fast.get())
        with autocast(self.device, "fast"):
            frames = generator.animate(SourceFeatures(feature_3d, motion_feature), kp_source, kp_driving)
        return frames.float()

    def _animate_fn(self, precision: Precision):
        compiled = self._compiled.get(precision)
        if compiled is not None:
            return compiled
        return self._animate_exact if precision == "exact" else self._animate_fast

    def compile(self, size: int, batch_size: int, precision: Precision = "exact") -> float:
        """Compile the per-frame network for ``size`` px frames in batches of ``batch_size`` (at load, never in a
        job); returns the seconds it took.  Later calls with other shapes run eagerly."""
        check_precision(precision)
        fn = self._animate_exact if precision == "exact" else self._animate_fast
        if precision == "fast":
            self._fast.get()  # build the fast weights now: the graph freezes them
        compiled = self._compiled.setdefault(precision, StaticCompiled(fn, f"render {precision}"))
        side = size // 4
        depth = self.generator.reshape_depth
        motion = self.generator.dense_motion_network
        num_kp = motion.num_kp
        example = (
            torch.zeros(1, self.generator.reshape_channel, depth, side, side, device=self.device),
            torch.zeros(1, motion.compress.out_channels, depth, side, side, device=self.device),
            torch.zeros(1, num_kp, 3, device=self.device),
            torch.zeros(batch_size, num_kp, 3, device=self.device),
        )
        return compiled.warm_up(*example)

    def share_compiled(self, other: Renderer) -> None:
        """Use ``other``'s compiled graphs (both must share the generator, as the crop and full renderers do)."""
        if other.generator is not self.generator:
            raise ValueError("share_compiled needs renderers that share one generator")
        self._compiled = other._compiled
        self._fast = other._fast

    def compiled_batch_sizes(self, precision: Precision) -> set[int]:
        compiled = self._compiled.get(precision)
        # A shape key is (name, shape, ...) per argument; argument 3's shape starts with the batch size.
        return set() if compiled is None else {cast(Any, key)[3][0][0] for key in compiled.shapes}

    @torch.inference_mode()
    def render_frames(self, source: SourceState, driving: DrivingState, precision: Precision = "exact") -> torch.Tensor:
        """(B, 3, S, S) frames in [0, 1] for a batch of driving keypoints."""
        kp_driving = driving.kp_driving
        batch = kp_driving.shape[0]
        padded = min((b for b in self.compiled_batch_sizes(precision) if b > batch), default=batch)
        if padded > batch:
            # The last, short batch of a clip: pad it to a compiled shape (frames are independent) and drop the
            # extra frames, rather than run it eagerly.
            kp_driving = torch.cat([kp_driving, kp_driving[-1:].expand(padded - batch, -1, -1)])
        features = source.features
        frames = self._animate_fn(precision)(features.feature_3d, features.motion_feature, source.kp_source, kp_driving)
        return frames[:batch]

    # -- whole stage -----------------------------------------------------------------------------------------------

    def render(
        self,
        source_image: torch.Tensor,
        source_semantics: torch.Tensor,
        target_semantics: torch.Tensor,
        batch_size: int = 2,
        *,
        pose_override: PoseOverride | None = None,
        precision: Precision = "exact",
    ) -> Iterator[torch.Tensor]:
        """Yield the T frames of ``target_semantics`` (T, C, 27) in order, in batches of up to ``batch_size``.

        Source keypoints and features are computed once.  Frames are independent, so the batch size only trades
        memory for speed.  Inference mode is entered per batch, never held across a ``yield``.  ``precision``:
        "exact" (float32) or "fast" (reduced precision, see :mod:`sadtalker.render.accel`).
        """
        check_precision(precision)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if target_semantics.ndim != 3:
            raise ValueError(f"target_semantics must be (T, C, 27), got {tuple(target_semantics.shape)}")
        source = self.prepare_source(source_image, source_semantics)
        targets = target_semantics.to(self.device, torch.float32)
        for start in range(0, targets.shape[0], batch_size):
            frames = slice(start, start + batch_size)
            override = pose_override.select(frames, self.device) if pose_override else None
            yield self.render_frames(source, self.drive(source, targets[frames], override), precision)
