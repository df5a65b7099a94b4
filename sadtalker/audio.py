"""Audio front end: 16 kHz waveform -> log-mel spectrogram -> one 16-step mel window per video frame.

Faithful to SadTalker's (Wav2Lip-derived) recipe, see ``mel_notes`` in the reference kit's model_configs.json:
pre-emphasis, centred librosa STFT with *zero* padding, slaney mel filters, dB with a -100 dB floor, symmetric
[-4, 4] scaling.  Zero padding is what upstream's pin (librosa 0.9.2) really does: its STFT default became
``pad_mode='constant'`` in librosa 0.9.0 (changelog #1382).  The kit's notes say 'reflect', but the goldens only
match zero padding (reflect changes the first/last two mel rows by up to 0.86), so we pass 'constant' explicitly.
File decoding/resampling lives elsewhere: this module starts from a decoded float 16 kHz mono waveform.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import librosa
import numpy as np
from scipy.signal import lfilter

from sadtalker.contracts import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from sadtalker.errors import AudioError, AudioTooShortError

N_FFT = 800
HOP_LENGTH = 200
WIN_LENGTH = 800
NUM_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_WINDOW_STEPS = 16  # mel rows per video frame window (syncnet_mel_step_size)
MEL_STEPS_PER_SECOND = 80.0  # 16000 / hop 200
# Frame i's window starts 2 video frames earlier, so the window is roughly centred on the frame.
WINDOW_FRAME_OFFSET = 2


@dataclass(frozen=True)
class AudioFeatures:
    """Everything the motion stage needs from the audio.

    ``wav`` is the input cropped (or zero-padded) to exactly ``num_frames * 640`` samples, which is also what
    the muxer should put under the video so audio and frames have the same length.
    """

    num_frames: int  # T video frames at 25 fps
    wav: np.ndarray  # (T*640,) float32
    mel: np.ndarray  # (T_mel, 80) float32, values in [-4, 4]
    indiv_mels: np.ndarray  # (T, 80, 16) float32, one mel window per video frame


@functools.cache
def mel_basis() -> np.ndarray:
    """The (80, 401) slaney mel filter bank (float32), built once: it only depends on the constants above."""
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN, fmax=FMAX)
    basis.setflags(write=False)  # shared between calls: make accidental in-place edits fail loudly
    return basis


def num_video_frames(num_samples: int) -> int:
    """Video frames covered by ``num_samples`` at 16 kHz / 25 fps (partial trailing frame dropped)."""
    return num_samples // SAMPLES_PER_FRAME


def fit_to_frames(wav: np.ndarray, num_frames: int) -> np.ndarray:
    """Crop or zero-pad ``wav`` to exactly ``num_frames * 640`` samples."""
    length = num_frames * SAMPLES_PER_FRAME
    if len(wav) >= length:
        return wav[:length]
    return np.pad(wav, (0, length - len(wav)))


def _stft(signal: np.ndarray) -> np.ndarray:
    return librosa.stft(
        signal,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        win_length=WIN_LENGTH,
        window="hann",
        center=True,
        pad_mode="constant",  # zeros, as librosa 0.9.2 (upstream's pin); 'reflect' changes the edge rows
    )


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Normalised log-mel spectrogram, shape (T_mel, 80), float32.

    Computed in float64 (lfilter promotes) like the original, converted to float32 at the end.
    """
    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], wav)
    with warnings.catch_warnings():
        # Clips under 50 ms are shorter than one FFT window; zero padding handles that, as upstream.
        warnings.filterwarnings("ignore", message="n_fft=.* is too large for input signal", category=UserWarning)
        spectrum = _stft(emphasised)
    mel_amplitude = mel_basis() @ np.abs(spectrum)
    min_amplitude = 10.0 ** (MIN_LEVEL_DB / 20.0)
    db = 20.0 * np.log10(np.maximum(min_amplitude, mel_amplitude)) - REF_LEVEL_DB
    scaled = (2.0 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).T.astype(np.float32)


def window_start_rows(num_frames: int) -> np.ndarray:
    """First mel row of each video frame's window: int(80 * (i - 2) / 25), truncated toward zero.

    Truncation (not floor) matters for the first frames: i=0 -> -6, i=1 -> -3.
    """
    frames = np.arange(num_frames, dtype=np.float64)
    return np.trunc(MEL_STEPS_PER_SECOND * ((frames - WINDOW_FRAME_OFFSET) / FPS)).astype(np.int64)


def frame_mel_windows(mel: np.ndarray, num_frames: int) -> np.ndarray:
    """Per-frame 16-row mel windows, rows clamped to the spectrogram, as (T, 80, 16)."""
    rows = window_start_rows(num_frames)[:, None] + np.arange(MEL_WINDOW_STEPS)[None, :]
    rows = np.clip(rows, 0, mel.shape[0] - 1)
    return np.ascontiguousarray(mel[rows].transpose(0, 2, 1))


def compute_audio_features(wav: np.ndarray) -> AudioFeatures:
    """Mel features of a decoded float 16 kHz mono waveform.

    Raises ``AudioTooShortError`` when the audio holds less than one video frame (40 ms).
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError(f"expected a mono waveform (1-D array), got shape {wav.shape}")
    if not np.issubdtype(wav.dtype, np.floating):
        raise AudioError(f"expected a float waveform, got dtype {wav.dtype}")
    num_frames = num_video_frames(len(wav))
    if num_frames < 1:
        raise AudioTooShortError(
            f"audio is {len(wav) / SAMPLE_RATE * 1000:.1f} ms long; at least {1000 // FPS} ms (one video frame) "
            "is needed"
        )
    if not np.all(np.isfinite(wav)):
        raise AudioError("the waveform contains NaN or infinite samples")
    wav = fit_to_frames(wav.astype(np.float32, copy=False), num_frames)
    mel = melspectrogram(wav)
    return AudioFeatures(num_frames=num_frames, wav=wav, mel=mel, indiv_mels=frame_mel_windows(mel, num_frames))
