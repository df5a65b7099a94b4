"""Audio -> head-pose motion: the conditional VAE of upstream ``Audio2Pose`` (checkpoint prefix ``audio2pose.``).

Inference samples the CVAE's prior: for each 32-frame chunk, noise z (64) plus a learned per-style bias
(``classbias[pose_style]``), the reference pose (6) and the chunk's audio are decoded into 32 frames of pose
*motion* (offsets from the reference pose).

Checkpoint: ``audio_encoder.audio_encoder.*`` and ``netG.decoder.*`` are loaded into this module.
``netG.encoder.*`` (the CVAE posterior) and ``netD_motion.*`` (a pose-sequence GAN discriminator) are only used in
training.  We *validate and drop* them: they are loaded strictly into shape-only copies of their architectures
on the meta device (no memory, no compute), so a wrong or truncated file still fails loudly, but the serving
process does not keep ~2.5 M unused parameters.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sadtalker.errors import InputError
from sadtalker.motion.layers import AUDIO_EMBEDDING_DIM, MEL_BINS, MEL_STEPS, mel_window_encoder
from sadtalker.motion.resunet import ResUnet
from sadtalker.weights import load_strict, take_prefix

CHECKPOINT_PREFIX = "audio2pose"
SEQ_LEN = 32  # frames decoded per CVAE call
LATENT_DIM = 64
NUM_POSE_STYLES = 46
POSE_DIM = 6  # angles (3) + translation (3)
AUDIO_CODE_DIM = 6  # per-frame audio embedding after linear_audio (AUDIO_EMB_OUT_SIZE)
DECODER_HIDDEN = (128, 192)  # DECODER_LAYER_SIZES; the last must be SEQ_LEN * POSE_DIM
ENCODER_HIDDEN = 128  # ENCODER_LAYER_SIZES[-1]
TRAINING_ONLY_PREFIXES = ("netG.encoder.", "netD_motion.")


class AudioEncoder(nn.Module):
    """Mel windows (L, 80, 16) -> per-frame audio embeddings (L, 512)."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = mel_window_encoder()

    def forward(self, mel_windows: Tensor) -> Tensor:
        return self.audio_encoder(mel_windows.unsqueeze(1)).flatten(1)


class PoseDecoder(nn.Module):
    """CVAE decoder: (z, style, reference pose, 32 frames of audio) -> 32 frames of pose motion."""

    def __init__(self) -> None:
        super().__init__()
        mlp_in = POSE_DIM + LATENT_DIM + SEQ_LEN * AUDIO_CODE_DIM  # 262
        self.MLP = nn.Sequential(  # name fixed by the checkpoint keys
            OrderedDict(
                [
                    ("L0", nn.Linear(mlp_in, DECODER_HIDDEN[0])),
                    ("A0", nn.ReLU()),
                    ("L1", nn.Linear(DECODER_HIDDEN[0], DECODER_HIDDEN[1])),
                    ("sigmoid", nn.Sigmoid()),
                ]
            )
        )
        self.resunet = ResUnet()
        self.pose_linear = nn.Linear(POSE_DIM, POSE_DIM)
        self.linear_audio = nn.Linear(AUDIO_EMBEDDING_DIM, AUDIO_CODE_DIM)
        self.classbias = nn.Parameter(torch.zeros(NUM_POSE_STYLES, LATENT_DIM))

    def forward(self, z: Tensor, pose_style: Tensor, ref_pose: Tensor, audio_emb: Tensor) -> Tensor:
        """(B, 64), (B,) long, (B, 6), (B, 32, 512) -> (B, 32, 6)."""
        batch = z.shape[0]
        audio_code = self.linear_audio(audio_emb).reshape(batch, -1)
        latent = z + self.classbias[pose_style]
        hidden = self.MLP(torch.cat([ref_pose, latent, audio_code], dim=-1))
        refined = self.resunet(hidden.reshape(batch, 1, SEQ_LEN, POSE_DIM))
        return self.pose_linear(refined.squeeze(1))


class PoseCVAE(nn.Module):
    """The inference half of the CVAE (``netG``): only the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = PoseDecoder()


class _PoseEncoderLayout(nn.Module):
    """Parameter layout of the training-only CVAE encoder (``netG.encoder``); never run."""

    def __init__(self) -> None:
        super().__init__()
        mlp_in = DECODER_HIDDEN[1] + LATENT_DIM + SEQ_LEN * AUDIO_CODE_DIM + POSE_DIM  # 454
        self.resunet = ResUnet()
        self.MLP = nn.Sequential(OrderedDict([("L0", nn.Linear(mlp_in, ENCODER_HIDDEN)), ("A0", nn.ReLU())]))
        self.linear_means = nn.Linear(ENCODER_HIDDEN, LATENT_DIM)
        self.linear_logvar = nn.Linear(ENCODER_HIDDEN, LATENT_DIM)
        self.linear_audio = nn.Linear(AUDIO_EMBEDDING_DIM, AUDIO_CODE_DIM)
        self.classbias = nn.Parameter(torch.zeros(NUM_POSE_STYLES, LATENT_DIM))


class _ConvNorm1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)


class _PoseDiscriminatorLayout(nn.Module):
    """Parameter layout of the training-only pose-sequence discriminator (``netD_motion``); never run."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            _ConvNorm1d(POSE_DIM, 256, 4),
            _ConvNorm1d(256, 512, 4),
            _ConvNorm1d(512, 1024, 3),
            nn.Conv1d(1024, 1, 3),
        )


def _validate_training_only(state: Mapping[str, Tensor], source: str) -> None:
    """Strict key/shape check of the training-only tensors, without allocating their modules."""
    with torch.device("meta"):
        layouts = {"netG.encoder": _PoseEncoderLayout(), "netD_motion": _PoseDiscriminatorLayout()}
    with warnings.catch_warnings():
        # Copying into meta tensors is a deliberate no-op; torch warns about it once per tensor.
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*", category=UserWarning)
        for prefix, layout in layouts.items():
            load_strict(layout, take_prefix(state, prefix), f"{source}[{CHECKPOINT_PREFIX}.{prefix}.]")


class Audio2PoseNet(nn.Module):
    """Audio encoder + CVAE decoder (keys ``audio_encoder.audio_encoder.*``, ``netG.decoder.*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = AudioEncoder()
        self.netG = PoseCVAE()  # name fixed by the checkpoint keys

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Tensor], source: str = "SadTalker safetensors") -> Audio2PoseNet:
        """Build from the already-read SadTalker safetensors dict (all prefixes), strictly, in eval mode."""
        state = take_prefix(checkpoint, CHECKPOINT_PREFIX)
        _validate_training_only(state, source)
        used = {key: value for key, value in state.items() if not key.startswith(TRAINING_ONLY_PREFIXES)}
        model = cls()
        load_strict(model, used, f"{source}[{CHECKPOINT_PREFIX}.]")
        return model.eval().requires_grad_(False)

    def forward(self, mel_windows: Tensor, z: Tensor, pose_style: int, ref_pose: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk: (32, 80, 16), (64,), style, (6,) -> audio embedding (32, 512), pose motion (32, 6)."""
        audio_emb = self.audio_encoder(mel_windows)
        style = torch.tensor([pose_style], dtype=torch.long, device=z.device)
        motion = self.netG.decoder(z.unsqueeze(0), style, ref_pose.unsqueeze(0), audio_emb.unsqueeze(0))
        return audio_emb, motion.squeeze(0)


@dataclass(frozen=True)
class PoseChunkSchedule:
    """Which mel windows each CVAE call sees and which of its output frames are kept.

    Frame 0 is the reference (motion 0); frames 1..T-1 are covered by ``full_chunks`` chunks of 32 and, when
    T-1 is not a multiple of 32, one more chunk over the *last* 32 frames whose final ``remainder`` outputs
    are kept (upstream ``Audio2Pose.test``).
    """

    num_frames: int

    @property
    def full_chunks(self) -> int:
        return max(self.num_frames - 1, 0) // SEQ_LEN

    @property
    def remainder(self) -> int:
        return max(self.num_frames - 1, 0) % SEQ_LEN

    @property
    def num_chunks(self) -> int:
        return self.full_chunks + (1 if self.remainder else 0)

    def window_frames(self, chunk: int) -> list[int]:
        """Video-frame indices (into the T frames) of the 32 mel windows fed to ``chunk``."""
        if chunk < self.full_chunks:
            start = 1 + chunk * SEQ_LEN
        else:
            start = self.num_frames - SEQ_LEN
        # Upstream cannot run T < 33 (its last chunk is then shorter than 32 and the decoder's input size breaks);
        # we extend it by repeating frame 1's window in front, the same edge-clamping the mel windows use.
        return [max(frame, 1) for frame in range(start, start + SEQ_LEN)]


def num_pose_chunks(num_frames: int) -> int:
    """How many CVAE calls (and noise vectors z) a clip of ``num_frames`` frames needs."""
    return PoseChunkSchedule(num_frames).num_chunks


def draw_pose_noise(num_frames: int, generator: torch.Generator) -> Tensor:
    """Per-chunk CVAE noise (n_chunks, 64), drawn one chunk at a time in call order like upstream."""
    draws = [torch.randn(1, LATENT_DIM, generator=generator) for _ in range(num_pose_chunks(num_frames))]
    return torch.cat(draws) if draws else torch.zeros(0, LATENT_DIM)


@dataclass(frozen=True)
class PoseMotion:
    audio_emb: Tensor  # (n_chunks, 32, 512)
    chunk_motion: Tensor  # (n_chunks, 32, 6) full decoder output of every call
    motion: Tensor  # (T, 6) motion per frame, frame 0 = 0


def check_pose_style(pose_style: int) -> int:
    if isinstance(pose_style, bool) or not isinstance(pose_style, int) or not 0 <= pose_style < NUM_POSE_STYLES:
        raise InputError(
            f"pose_style must be an integer in [0, {NUM_POSE_STYLES - 1}], got {pose_style!r}", field="pose_style"
        )
    return pose_style


def predict_pose_motion(
    model: Audio2PoseNet, indiv_mels: Tensor, ref_pose: Tensor, pose_style: int, noise: Tensor
) -> PoseMotion:
    """Pose motion for every frame: ``indiv_mels`` (T, 80, 16), ``ref_pose`` (6,), ``noise`` (n_chunks, 64)."""
    num_frames = indiv_mels.shape[0]
    if indiv_mels.shape[1:] != (MEL_BINS, MEL_STEPS):
        raise ValueError(f"indiv_mels must be (T, {MEL_BINS}, {MEL_STEPS}), got {tuple(indiv_mels.shape)}")
    if ref_pose.shape != (POSE_DIM,):
        raise ValueError(f"ref_pose must be ({POSE_DIM},), got {tuple(ref_pose.shape)}")
    check_pose_style(pose_style)
    schedule = PoseChunkSchedule(num_frames)
    if noise.shape != (schedule.num_chunks, LATENT_DIM):
        raise ValueError(
            f"pose noise must be ({schedule.num_chunks}, {LATENT_DIM}) for {num_frames} frames, "
            f"got {tuple(noise.shape)}"
        )
    embeddings: list[Tensor] = []
    chunk_motions: list[Tensor] = []
    kept = [ref_pose.new_zeros(1, POSE_DIM)]  # the reference frame does not move
    with torch.inference_mode():
        for chunk in range(schedule.num_chunks):
            windows = indiv_mels[schedule.window_frames(chunk)]
            audio_emb, motion = model(windows, noise[chunk], pose_style, ref_pose)
            embeddings.append(audio_emb)
            chunk_motions.append(motion)
            kept.append(motion if chunk < schedule.full_chunks else motion[SEQ_LEN - schedule.remainder :])
    empty = indiv_mels.new_zeros
    return PoseMotion(
        audio_emb=torch.stack(embeddings) if embeddings else empty(0, SEQ_LEN, AUDIO_EMBEDDING_DIM),
        chunk_motion=torch.stack(chunk_motions) if chunk_motions else empty(0, SEQ_LEN, POSE_DIM),
        motion=torch.cat(kept),
    )
