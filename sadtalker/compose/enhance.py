"""GFPGAN v1.4 face enhancement of output frames, as the original applies it, built from a checkpoint directory.

The original (``src/utils/face_enhancer.py``) runs ``GFPGANer(arch='clean', channel_multiplier=2,
bg_upsampler=None).enhance(frame, has_aligned=False, only_center_face=False, paste_back=True)`` on every frame:
RetinaFace finds the faces (score > 0.97, eye distance >= 5 px), each face is warped onto the FFHQ 512x512
template, restored by GFPGAN, and pasted back through a ParseNet face mask. We run the same steps with
facexlib's own ``FaceRestoreHelper`` methods, but:

* every network is loaded strictly from ``checkpoint_dir`` (GFPGANer resolves ``gfpgan/weights`` against the
  working directory and downloads whatever is missing; we never download);
* the GFPGAN network restores the faces of several frames in one batch;
* the decoder's noise is explicit. GFPGANer draws fresh N(0, 1) noise for each StyleGAN layer of each face from
  torch's global RNG. We draw it, in the same order and shapes, from the caller's ``torch.Generator``, so a
  seeded generator reproduces ``torch.manual_seed(seed)`` + GFPGANer exactly. Without a generator the noise
  maps stored in the checkpoint are used (deterministic, and the same for every frame: no noise flicker).

Output size: the original passes ``upscale=2`` (frames come back twice as large, the background Lanczos-resized).
The default here is ``upscale=1``, frames keep their size; ``upscale=2`` reproduces the original.
When no face is found a frame comes back unchanged (with ``upscale=1``), as with GFPGANer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from basicsr.utils import img2tensor, tensor2img
from facexlib.detection.retinaface import RetinaFace
from facexlib.parsing.parsenet import ParseNet
from facexlib.utils.face_restoration_helper import FaceRestoreHelper
from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean
from torchvision.transforms.functional import normalize

from sadtalker.checkpoints.files import CheckpointPaths, checkpoint_paths
from sadtalker.contracts import StopCheck
from sadtalker.errors import RenderError
from sadtalker.face.detect import load_detector
from sadtalker.render.accel import (
    FastWeights,
    Precision,
    StaticCompiled,
    autocast,
    check_precision,
    fast_channels_last,
    to_channels_last,
)
from sadtalker.weights import CheckpointError, load_strict, read_torch

FACE_SIZE = 512
SCORE_THRESHOLD = 0.97  # FaceRestoreHelper.get_face_landmarks_5's detection threshold
EYE_DIST_THRESHOLD = 5  # GFPGANer.enhance skips faces whose eyes are closer than this (pixels)


@dataclass
class _AlignedFrame:
    """One frame between alignment and paste-back."""

    bgr: np.ndarray  # (H, W, 3) uint8, the frame as the helper reads it
    affine_matrices: list[np.ndarray]  # one (2, 3) frame -> 512 template warp per face
    crops: list[np.ndarray]  # (512, 512, 3) uint8 BGR aligned faces


class FaceEnhancer:
    """GFPGAN v1.4 face restoration for RGB uint8 frames; networks loaded from ``checkpoint_dir`` only.

    Not re-entrant (facexlib's helper keeps per-frame state): calls are serialised by a lock.
    """

    def __init__(
        self,
        checkpoints: str | Path | CheckpointPaths,
        device: str | torch.device = "cpu",
        *,
        upscale: int = 1,
        batch_size: int = 4,
        max_faces: int | None = None,
        detector: RetinaFace | None = None,
        face_batch: int | None = None,
    ) -> None:
        """``batch_size``: frames per chunk (their faces go to GFPGAN together, ``face_batch`` at a time;
        default 1 on CPU, where batching faces gains nothing, and ``batch_size`` on CUDA).

        ``max_faces``: restore at most this many faces per frame, the largest first (None = all, as
        GFPGANer). With random (synthetic) weights RetinaFace "finds" hundreds of faces per frame, each costing a
        GFPGAN pass. ``detector``: an already loaded RetinaFace ResNet-50 (the face stage's) to share.
        """
        paths = checkpoint_paths(checkpoints)
        needed = [paths.gfpgan, paths.face_parsing] + ([] if detector is not None else [paths.face_detection])
        missing = [path.name for path in needed if not path.is_file()]
        if missing:
            raise CheckpointError(f"face enhancer weights not found in {paths.directory}: missing {', '.join(missing)}")
        if upscale < 1:
            raise ValueError(f"upscale must be >= 1, got {upscale}")
        self.device = torch.device(device)
        self.upscale = upscale
        self.batch_size = max(1, batch_size)
        self.face_batch = max(1, face_batch or (self.batch_size if self.device.type == "cuda" else 1))
        self.max_faces = max_faces
        self.gfpgan = load_gfpgan(paths.gfpgan, self.device)
        self._fast_gfpgan = FastWeights(self.gfpgan, self.device)  # fast-mode weights, built on first use
        if detector is None:
            detector = load_detector(paths.face_detection, self.device)
        self.parser = _MaskParser(load_parser(paths.face_parsing, self.device), self.device)
        self.helper = _RestoreHelper(detector, self.parser, upscale, self.device)
        self._gfpgan_compiled: dict[Precision, StaticCompiled] = {}
        self._lock = threading.Lock()

    def compile(self, precision: Precision = "exact") -> float:
        """Compile GFPGAN (``face_batch`` faces) and ParseNet (one face) for ``precision`` at load; returns the
        seconds it took.  Other batch shapes run eagerly."""
        check_precision(precision)
        started = time.perf_counter()
        faces = torch.zeros(self.face_batch, 3, FACE_SIZE, FACE_SIZE, device=self.device)
        noise = _padded_noise(_stored_noise(self.gfpgan), self.face_batch)
        fn = self._gfpgan_fn(precision, compiled=False)
        compiled = self._gfpgan_compiled.setdefault(precision, StaticCompiled(fn, f"GFPGAN {precision}"))
        compiled.warm_up(faces, *noise)
        self.parser.compile(precision)
        return time.perf_counter() - started

    def _gfpgan_fn(self, precision: Precision, compiled: bool = True):
        if compiled and precision in self._gfpgan_compiled:
            return self._gfpgan_compiled[precision]
        device = self.device
        net = self._fast_gfpgan.get() if precision == "fast" else self.gfpgan
        channels_last = precision == "fast" and fast_channels_last(device)

        def restore(faces: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
            if channels_last:
                faces = to_channels_last(faces)
            with autocast(device, precision):
                return gfpgan_forward(net, faces, list(noise)).float()

        return restore

    # --------------------------------------------------------------------------------------------- public

    def enhance(
        self,
        frames: np.ndarray | Sequence[np.ndarray],
        *,
        generator: torch.Generator | None = None,
        landmarks: Sequence[Sequence[np.ndarray]] | None = None,
        precision: Precision = "exact",
        check: StopCheck | None = None,
    ) -> np.ndarray:
        """Restore the faces of RGB uint8 frames ``(T, H, W, 3)``; returns ``(T, H*upscale, W*upscale, 3)``.

        ``generator``: source of the decoder noise (see the module doc); None = the checkpoint's fixed noise.
        ``landmarks``: per frame, a list of (5, 2) face landmarks (eyes, nose, mouth corners; pixels) to use
        instead of running the detector (tests inject faces that random weights cannot detect).
        ``precision``: "exact" or "fast" (GFPGAN and ParseNet in reduced precision).
        ``check``: called before each frame's detection, each GFPGAN pass (one face on CPU) and each frame's
        paste-back; whatever it raises stops the enhancement there (a shutdown need not wait for the batch).
        """
        check_precision(precision)
        frames = list(frames)
        if landmarks is not None and len(landmarks) != len(frames):
            raise ValueError(f"{len(landmarks)} landmark lists for {len(frames)} frames")
        out: list[np.ndarray] = []
        with self._lock, torch.inference_mode():
            self.parser.precision = precision
            for start in range(0, len(frames), self.batch_size):
                chunk = frames[start : start + self.batch_size]
                chunk_landmarks = None if landmarks is None else landmarks[start : start + self.batch_size]
                out.extend(self._enhance_chunk(chunk, chunk_landmarks, generator, precision, check))
        if not out:
            return np.zeros((0, 0, 0, 3), np.uint8)
        return np.stack(out)

    def restore_faces(
        self,
        crops: Sequence[np.ndarray],
        *,
        generator: torch.Generator | None = None,
        precision: Precision = "exact",
        check: StopCheck | None = None,
    ) -> list[np.ndarray]:
        """GFPGAN on aligned 512x512 BGR uint8 faces, ``face_batch`` at a time; returns restored BGR uint8 faces.

        Pre/post-processing is GFPGANer's: ``img2tensor(face / 255)``, normalise to [-1, 1], and
        ``tensor2img(min_max=(-1, 1))`` (clamp, rescale, round).  ``check`` is called before each GFPGAN pass.
        """
        restored: list[np.ndarray] = []
        restore = self._gfpgan_fn(precision)
        # Sub-batches of at most face_batch faces; noise is drawn per face in order, so the split is invisible.
        # A short last batch is padded to face_batch (a compiled shape) and the padding dropped.
        for start in range(0, len(crops), self.face_batch):
            if check is not None:
                check()
            part = crops[start : start + self.face_batch]
            batch = torch.stack([self._to_tensor(crop) for crop in part]).to(self.device)
            if generator is None:
                noise = _stored_noise(self.gfpgan)
            else:
                noise = decoder_noise(self.gfpgan, len(part), generator)
            size = self.face_batch if isinstance(restore, StaticCompiled) else len(part)
            if size > len(part):
                batch = torch.cat([batch, batch[-1:].expand(size - len(part), -1, -1, -1)])
            noise = _padded_noise(noise, size)
            with torch.inference_mode():
                try:
                    faces = restore(batch, *noise)[: len(part)]
                except RuntimeError as exc:  # e.g. out of memory
                    raise RenderError(f"GFPGAN failed on a batch of {len(part)} faces: {exc}") from exc
            restored.extend(tensor2img(face, rgb2bgr=True, min_max=(-1, 1)).astype(np.uint8) for face in faces)
        return restored

    # -------------------------------------------------------------------------------------------- private

    def _enhance_chunk(
        self,
        frames: list[np.ndarray],
        landmarks: Sequence[Sequence[np.ndarray]] | None,
        generator: torch.Generator | None,
        precision: Precision,
        check: StopCheck | None = None,
    ) -> list[np.ndarray]:
        def checkpoint() -> None:
            if check is not None:
                check()

        aligned = []
        for i, image in enumerate(frames):
            checkpoint()
            aligned.append(self._align(image, None if landmarks is None else landmarks[i]))
        # The faces of the whole chunk go to GFPGAN together, in frame order (GFPGANer's noise draw order).
        restored = self.restore_faces(
            [crop for frame in aligned for crop in frame.crops], generator=generator, precision=precision, check=check
        )
        out = []
        for frame in aligned:
            checkpoint()
            faces, restored = restored[: len(frame.crops)], restored[len(frame.crops) :]
            out.append(np.ascontiguousarray(self._paste(frame, faces)[:, :, ::-1]))
        return out

    def _align(self, rgb: np.ndarray, landmarks: Sequence[np.ndarray] | None) -> _AlignedFrame:
        """Find (or take) the faces of one frame and warp them onto the 512 template (GFPGANer's first half)."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"frames must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
        helper = self.helper
        helper.clean_all()
        helper.read_image(np.ascontiguousarray(rgb[:, :, ::-1]))
        if landmarks is None:
            helper.get_face_landmarks_5(only_center_face=False, eye_dist_threshold=EYE_DIST_THRESHOLD)
            if self.max_faces is not None:
                keep = largest_faces(helper.det_faces, self.max_faces)
                helper.det_faces = [helper.det_faces[i] for i in keep]
                helper.all_landmarks_5 = [helper.all_landmarks_5[i] for i in keep]
        else:
            # float32, like the detector's landmarks (cv2.estimateAffinePartial2D then sees the same input type).
            helper.all_landmarks_5 = [np.asarray(points, dtype=np.float32).reshape(5, 2) for points in landmarks]
        helper.align_warp_face()
        return _AlignedFrame(helper.input_img, list(helper.affine_matrices), list(helper.cropped_faces))

    def _paste(self, frame: _AlignedFrame, restored: list[np.ndarray]) -> np.ndarray:
        """Paste restored faces back through the parsing mask (GFPGANer's second half); returns BGR."""
        helper = self.helper
        helper.clean_all()
        helper.read_image(frame.bgr)
        helper.affine_matrices = list(frame.affine_matrices)
        helper.cropped_faces = list(frame.crops)
        for face in restored:
            helper.add_restored_face(face)
        helper.get_inverse_affine(None)
        return helper.paste_faces_to_input_image(upsample_img=None)

    @staticmethod
    def _to_tensor(crop: np.ndarray) -> torch.Tensor:
        tensor = img2tensor(crop / 255.0, bgr2rgb=True, float32=True)
        normalize(tensor, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), inplace=True)
        return tensor


def largest_faces(boxes: Sequence[np.ndarray], max_faces: int) -> list[int]:
    """Indices of the ``max_faces`` largest detections (box area), largest first; ties keep detection order.

    ``boxes``: per face ``[x1, y1, x2, y2, ...]`` (facexlib's ``det_faces``, sorted by score). Largest, not most
    confident: in a group photo the faces that matter are the big ones, and RetinaFace scores small background
    faces as confidently as the subject's.
    """
    areas = [max(float(b[2]) - float(b[0]), 0.0) * max(float(b[3]) - float(b[1]), 0.0) for b in boxes]
    order = sorted(range(len(areas)), key=lambda i: -areas[i])  # sorted() is stable: ties keep detection order
    return order[:max_faces]


def decoder_noise(net: GFPGANv1Clean, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Per-layer decoder noise for ``count`` faces: N(0, 1) drawn face by face, layer by layer.

    That is the order in which GFPGANer's per-face calls draw it from the global RNG (each StyleGAN layer's
    NoiseInjection calls ``normal_()`` on a ``(1, 1, h, w)`` map), so a generator seeded like the global RNG
    gives the same maps. Returns one ``(count, 1, h, w)`` tensor per layer, on the network's device.
    """
    decoder = net.stylegan_decoder
    shapes = [getattr(decoder.noises, f"noise{i}").shape for i in range(decoder.num_layers)]
    device = decoder.noises.noise0.device
    per_face = [[torch.randn(tuple(shape), generator=generator) for shape in shapes] for _ in range(count)]
    return [torch.cat([face[layer] for face in per_face]).to(device) for layer in range(len(shapes))]


def _stored_noise(net: GFPGANv1Clean) -> list[torch.Tensor]:
    """The checkpoint's fixed decoder noise maps, (1, 1, h, w) per layer (what ``randomize_noise=False`` uses)."""
    decoder = net.stylegan_decoder
    return [getattr(decoder.noises, f"noise{i}") for i in range(decoder.num_layers)]


def _padded_noise(noise: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Each layer's noise as exactly ``count`` maps: a shared (1, ...) map is expanded, per-face maps padded with
    copies of the last one (padding faces are dropped after the forward pass)."""
    out = []
    for layer in noise:
        if layer.shape[0] < count:
            layer = torch.cat([layer, layer[-1:].expand(count - layer.shape[0], -1, -1, -1)])
        out.append(layer.contiguous())
    return out


def gfpgan_forward(net: GFPGANv1Clean, faces: torch.Tensor, noise: list[torch.Tensor] | None) -> torch.Tensor:
    """``GFPGANv1Clean.forward(faces, return_rgb=False)[0]`` with the StyleGAN decoder's noise given explicitly.

    ``noise``: one ``(B or 1, 1, h, w)`` tensor per decoder layer, or None for the noise maps stored in the
    checkpoint (``randomize_noise=False``). Same operations as the library's forward, minus the intermediate
    RGB outputs it computes and GFPGANer discards.
    """
    feat = F.leaky_relu_(net.conv_body_first(faces), negative_slope=0.2)
    skips: list[torch.Tensor] = []
    for down in net.conv_body_down:
        feat = down(feat)
        skips.insert(0, feat)
    feat = F.leaky_relu_(net.final_conv(feat), negative_slope=0.2)
    style = net.final_linear(feat.reshape(feat.size(0), -1))  # reshape: feat may be channels-last
    if net.different_w:
        style = style.view(style.size(0), -1, net.num_style_feat)
    conditions = []
    for skip, up, scale, shift in zip(skips, net.conv_body_up, net.condition_scale, net.condition_shift, strict=True):
        feat = up(feat + skip)
        # Spatial feature transform parameters for the decoder, one (scale, shift) pair per resolution.
        conditions.append(scale(feat).clone())
        conditions.append(shift(feat).clone())
    image, _ = net.stylegan_decoder(
        [style], conditions, input_is_latent=net.input_is_latent, noise=noise, randomize_noise=False
    )
    return image


class _MaskParser:
    """ParseNet as facexlib's paste-back calls it (``face_parse(x)[0]``), minus the work whose result is unused.

    facexlib keeps only the argmax of the 19 parsing logits; ParseNet's second head (a 64 -> 3 convolution at
    512x512, the "image" output) is computed and discarded, so we skip it: the logits are identical.  In fast
    mode the network runs in reduced precision (the mask it feeds is blurred twice with a 101-px Gaussian).
    """

    def __init__(self, net: ParseNet, device: torch.device) -> None:
        self.net = net
        self.device = device
        self.precision: Precision = "exact"
        self._compiled: dict[Precision, StaticCompiled] = {}
        self._fast = FastWeights(net, device)

    def logits(self, x: torch.Tensor, net: ParseNet | None = None) -> torch.Tensor:
        net = net or self.net
        feat = net.encoder(x)
        return net.out_mask_conv(net.decoder(feat + net.body(feat)))

    def _eager(self, precision: Precision):
        channels_last = precision == "fast" and fast_channels_last(self.device)
        net = cast(ParseNet, self._fast.get()) if precision == "fast" else self.net

        def parse(x: torch.Tensor) -> torch.Tensor:
            if channels_last:
                x = to_channels_last(x)
            with autocast(self.device, precision):
                return self.logits(x, net).float()

        return parse

    def compile(self, precision: Precision) -> float:
        compiled = self._compiled.setdefault(precision, StaticCompiled(self._eager(precision), f"ParseNet {precision}"))
        return compiled.warm_up(torch.zeros(1, 3, FACE_SIZE, FACE_SIZE, device=self.device))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        fn = self._compiled.get(self.precision) or self._eager(self.precision)
        return (fn(x),)


class _RestoreHelper(FaceRestoreHelper):
    """facexlib's FaceRestoreHelper in GFPGANer's configuration, with networks we loaded ourselves.

    The base ``__init__`` would build the detector and parser through facexlib's loaders, which resolve
    paths on their own and download missing files; so we set up the same attributes for GFPGANer's
    configuration (512 face, crop ratio 1, 5-point FFHQ template, parsing mask, no blur padding) instead.
    Pinned to facexlib 0.3.0, whose methods use exactly these attributes.
    """

    def __init__(self, detector: RetinaFace, parser: _MaskParser, upscale: int, device: torch.device) -> None:
        self.template_3points = False
        self.upscale_factor = upscale
        self.crop_ratio = (1, 1)
        self.face_size = (FACE_SIZE, FACE_SIZE)
        # Standard 5 landmarks of FFHQ faces at 512x512 (eyes, nose tip, mouth corners), facexlib's values.
        self.face_template = np.array(
            [
                [192.98138, 239.94708],
                [318.90277, 240.1936],
                [256.63416, 314.01935],
                [201.26117, 371.41043],
                [313.08905, 371.15118],
            ]
        )
        self.save_ext = "png"
        self.pad_blur = False
        self.device = device
        self.face_det = detector
        self.use_parse = True
        self.face_parse = parser
        self.clean_all()


def gfpgan_architecture() -> GFPGANv1Clean:
    """GFPGANv1Clean with the arguments GFPGANer uses for arch 'clean', channel_multiplier 2 (no weights)."""
    return GFPGANv1Clean(
        out_size=FACE_SIZE,
        num_style_feat=512,
        channel_multiplier=2,
        decoder_load_path=None,
        fix_decoder=False,
        num_mlp=8,
        input_is_latent=True,
        different_w=True,
        narrow=1,
        sft_half=True,
    )


def load_gfpgan(path: Path, device: torch.device) -> GFPGANv1Clean:
    """GFPGANv1Clean as GFPGANer builds it for arch 'clean', from ``params_ema`` (else ``params``)."""
    checkpoint = read_torch(path)
    key = "params_ema" if "params_ema" in checkpoint else "params"
    if key not in checkpoint:
        raise CheckpointError(f"{path}: expected a 'params_ema' or 'params' entry (GFPGAN checkpoint)")
    net = gfpgan_architecture()
    load_strict(net, checkpoint[key], f"{path.name}[{key}]")
    return net.to(device).eval()


def load_parser(path: Path, device: torch.device) -> ParseNet:
    """facexlib ParseNet(512, 512, 19) from a plain state dict, as ``init_parsing_model('parsenet')`` builds it."""
    state = read_torch(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a plain state dict of tensors (ParseNet weights)")
    parser = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    load_strict(parser, state, path.name)
    return parser.to(device).eval()
