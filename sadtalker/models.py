"""Every network a generation needs, loaded once from a checkpoint directory onto one device."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sadtalker.checkpoints.files import CheckpointPaths, checkpoint_paths
from sadtalker.contracts import CROP_COEFFS, FULL_COEFFS
from sadtalker.face.recon import ReconNet
from sadtalker.motion.audio2exp import Audio2ExpNet
from sadtalker.motion.audio2pose import Audio2PoseNet
from sadtalker.render.mapping import MappingConfig, MappingNet
from sadtalker.render.renderer import Renderer, load_mapping_state
from sadtalker.weights import load_strict, read_safetensors

logger = logging.getLogger(__name__)

__all__ = ["CROP_COEFFS", "FULL_COEFFS", "SizeModels", "load_size_models"]


@dataclass
class SizeModels:
    """The networks of one render size (256 or 512): both come from one safetensors file."""

    size: int
    recon: ReconNet
    audio2exp: Audio2ExpNet
    audio2pose: Audio2PoseNet
    renderers: dict[int, Renderer] = field(default_factory=dict)  # keyed by coeff count (70 / 73)


def load_size_models(
    checkpoints: str | Path | CheckpointPaths,
    size: int,
    device: torch.device,
    coeff_counts: Iterable[int] = (CROP_COEFFS, FULL_COEFFS),
) -> SizeModels:
    """Read ``SadTalker_V0.0.2_<size>.safetensors`` ONCE and build all five networks from it.

    The keypoint detector and generator are shared by the crop (70) and full (73) renderers; only the small
    mapping net differs.
    """
    paths = checkpoint_paths(checkpoints, size)
    started = time.perf_counter()
    state = read_safetensors(paths.sadtalker)
    source = paths.sadtalker.name
    recon = ReconNet(state, source=source, device=device)
    audio2exp = Audio2ExpNet.from_checkpoint(state, source).to(device)
    audio2pose = Audio2PoseNet.from_checkpoint(state, source).to(device)

    renderers: dict[int, Renderer] = {}
    for coeff_nc in sorted(set(coeff_counts)):
        mapping_path = paths.mapping_for(coeff_nc)
        if not renderers:
            renderers[coeff_nc] = Renderer.from_checkpoint(
                state, mapping_path, coeff_nc=coeff_nc, device=device, source_name=source
            )
            continue
        shared = next(iter(renderers.values()))
        mapping = MappingNet(MappingConfig(coeff_nc=coeff_nc))
        mapping_state, mapping_name = load_mapping_state(mapping_path)
        load_strict(mapping, mapping_state, mapping_name)
        renderers[coeff_nc] = Renderer(shared.kp_detector, shared.generator, mapping, device)
    del state  # the modules hold their own copies; drop the 725 MB dict now
    logger.info("loaded %s networks (%s) in %.1f s", size, source, time.perf_counter() - started)
    return SizeModels(size=size, recon=recon, audio2exp=audio2exp, audio2pose=audio2pose, renderers=renderers)
