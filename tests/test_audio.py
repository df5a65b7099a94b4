"""Audio front end: golden mel features and input validation."""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
from helpers import load_golden

from sadtalker.audio import (
    SAMPLES_PER_FRAME,
    AudioFeatures,
    compute_audio_features,
    frame_mel_windows,
    mel_basis,
    window_start_rows,
)
from sadtalker.errors import AudioError, AudioTooShortError

TOL = 1e-4  # README section 6: mel, indiv_mels <= 1e-4 abs


def load_case_wav(case_dir: Path) -> np.ndarray:
    audio = json.loads((case_dir / "case.json").read_text())["audio"]
    wav, _ = librosa.load(case_dir / audio, sr=16000, mono=True)
    return wav


def test_golden_audio_features(golden_case_dir: Path) -> None:
    golden = load_golden(golden_case_dir)
    features = compute_audio_features(load_case_wav(golden_case_dir))

    assert features.num_frames == json.loads((golden_case_dir / "case.json").read_text())["num_frames"]
    assert features.wav.dtype == np.float32 and features.mel.dtype == np.float32
    for name, ours in (("wav_16k", features.wav), ("mel", features.mel), ("indiv_mels", features.indiv_mels)):
        expected = golden[name]
        assert ours.shape == expected.shape, name
        error = np.abs(ours.astype(np.float64) - expected)
        assert error.max() <= TOL, f"{name}: max abs error {error.max():.3g}"


def test_edge_mel_rows_use_zero_padding(golden_case_dir: Path) -> None:
    """The first/last mel rows are where STFT padding shows; the goldens need zero ('constant') padding."""
    golden = load_golden(golden_case_dir)
    features = compute_audio_features(load_case_wav(golden_case_dir))
    for rows in (slice(0, 2), slice(-2, None)):
        assert np.abs(features.mel[rows] - golden["mel"][rows]).max() <= TOL


def test_too_short_audio_raises() -> None:
    with pytest.raises(AudioTooShortError) as info:
        compute_audio_features(np.zeros(SAMPLES_PER_FRAME - 1, dtype=np.float32))
    assert info.value.field == "driven_audio"
    with pytest.raises(AudioTooShortError):
        compute_audio_features(np.zeros(0, dtype=np.float32))


def test_one_frame_is_enough_and_tail_is_dropped() -> None:
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(SAMPLES_PER_FRAME + 300)).astype(np.float32)
    features = compute_audio_features(wav)
    assert isinstance(features, AudioFeatures)
    assert features.num_frames == 1
    assert features.wav.shape == (SAMPLES_PER_FRAME,)
    np.testing.assert_array_equal(features.wav, wav[:SAMPLES_PER_FRAME])
    assert features.mel.shape == (SAMPLES_PER_FRAME // 200 + 1, 80)
    assert features.indiv_mels.shape == (1, 80, 16)
    assert np.all(np.abs(features.mel) <= 4.0)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 1280), dtype=np.float32), np.zeros(1280, dtype=np.int16), np.full(1280, np.nan, np.float32)]
)
def test_invalid_waveforms_raise_audio_error(bad: np.ndarray) -> None:
    with pytest.raises(AudioError):
        compute_audio_features(bad)


def test_window_start_rows_truncate_toward_zero() -> None:
    # int(80 * (i - 2) / 25): i=0 -> int(-6.4) = -6, i=1 -> int(-3.2) = -3, i=2 -> 0, i=3 -> 3, i=27 -> 80
    np.testing.assert_array_equal(window_start_rows(28)[[0, 1, 2, 3, 27]], [-6, -3, 0, 3, 80])


def test_frame_windows_clamp_to_the_spectrogram() -> None:
    mel = np.arange(10, dtype=np.float32)[:, None].repeat(80, axis=1)  # row r holds value r
    windows = frame_mel_windows(mel, 3)
    assert windows.shape == (3, 80, 16)
    np.testing.assert_array_equal(windows[0, 0], [0] * 7 + [1, 2, 3, 4, 5, 6, 7, 8, 9])  # rows -6..9 clamped
    np.testing.assert_array_equal(windows[2, 0], list(range(10)) + [9] * 6)  # rows 0..15 clamped


def test_mel_basis_is_cached_and_read_only() -> None:
    basis = mel_basis()
    assert basis is mel_basis()
    assert basis.shape == (80, 401)
    with pytest.raises(ValueError):
        basis[0, 0] = 1.0
