"""Tests of the inversion attack's signal metrics (MCD, LSD, STOI) and the Griffin-Lim vocoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.fft import dct

from audit.errors import AudioError
from audit.signal_metrics import (
    MEL_SETTINGS,
    cepstrum_from_logmel,
    log_mel_spectrogram,
    log_spectral_distance,
    lsd_from_logmel,
    mcd,
    mcd_from_logmel,
    mel_cepstrum,
    stoi,
)
from audit.vocoder import GriffinLimVocoder, log_mel

SR = 16000


def _speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Syllable-rate (4 Hz) bursts of a gliding harmonic voice with two formants, plus faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120.0 + 30.0 * np.sin(2 * np.pi * 0.8 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    formant = 700.0 + 400.0 * np.sin(2 * np.pi * 1.3 * t)
    voiced = sum(np.sin(k * phase) / k * (np.exp(-((k * f0 - formant) / 300.0) ** 2)
                                          + 0.5 * np.exp(-((k * f0 - 2300.0) / 500.0) ** 2))
                 for k in range(1, 40))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None) ** 2
    wav = envelope * voiced + 0.003 * rng.standard_normal(t.size)
    return (0.3 * wav / np.max(np.abs(wav))).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return _speechlike()


@pytest.fixture(scope="module")
def noise(speech: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (0.1 * rng.standard_normal(speech.size)).astype(np.float32)


def test_log_mel_shape_and_floor(speech):
    lm = log_mel(speech)
    assert lm.shape == (1 + speech.size // MEL_SETTINGS.hop_length, MEL_SETTINGS.n_mels)
    assert lm.dtype == np.float32
    assert lm.min() >= math.log(MEL_SETTINGS.log_floor) - 1e-6
    assert MEL_SETTINGS.frame_rate == 100.0
    silent = log_mel(np.zeros(1600, dtype=np.float32))
    np.testing.assert_allclose(silent, math.log(1e-5), rtol=1e-6)


def test_mel_cepstrum_is_orthonormal_dct_without_c0(speech):
    c = mel_cepstrum(speech, order=24)
    lm = log_mel_spectrogram(speech)
    assert c.shape == (lm.shape[0], 24)
    np.testing.assert_allclose(c, dct(lm.astype(np.float64), type=2, norm="ortho", axis=1)[:, 1:25])
    constant = cepstrum_from_logmel(np.full((3, 80), -2.0))
    np.testing.assert_allclose(constant, 0.0, atol=1e-12)


def test_identical_signals_score_perfectly(speech):
    value, extra = mcd(speech, speech)
    assert value == 0.0
    assert extra["order"] == 24 and extra["n_frames"] == 1 + speech.size // 160
    assert log_spectral_distance(speech, speech)[0] == 0.0
    assert stoi(speech, speech) > 0.99
    assert stoi(speech, speech, extended=True) > 0.99


def test_noise_scores_clearly_worse(speech, noise):
    """White noise: MCD and LSD far from 0, ESTOI near 0.

    STOI stays near 0.4 (not 0) for a signal unrelated to the reference: its
    clipping step bounds each band envelope of the degraded signal by 1 +
    10^(15/20) times the reference's, which puts the reference's envelope into
    loud noise. ESTOI has no clipping.
    """
    assert mcd(speech, noise)[0] > 5.0
    assert log_spectral_distance(speech, noise)[0] > 10.0
    assert stoi(speech, noise) < 0.5
    assert stoi(speech, noise, extended=True) < 0.1


def test_mcd_is_gain_invariant_because_c0_is_excluded(speech, noise):
    louder = (speech * 10 ** (6 / 20)).astype(np.float32)
    assert mcd(speech, louder)[0] < 0.05
    assert mcd(speech, louder)[0] < 0.01 * mcd(speech, noise)[0]
    assert log_spectral_distance(speech, louder)[0] == pytest.approx(6.0, abs=0.05)


def test_mcd_matches_definition_by_hand(speech, noise):
    a, b = mel_cepstrum(speech), mel_cepstrum(noise)
    expected = np.mean(10 / np.log(10) * np.sqrt(2 * np.sum((a - b) ** 2, axis=1)))
    assert mcd(speech, noise)[0] == pytest.approx(expected, rel=1e-9)


def test_mcd_from_logmel_matches_mcd(speech, noise):
    degraded = (speech + 0.3 * noise).astype(np.float32)
    direct = mcd(speech, degraded)[0]
    from_logmel = mcd_from_logmel(log_mel(speech), log_mel(degraded))[0]
    assert from_logmel == pytest.approx(direct, rel=1e-6)
    assert mcd_from_logmel(log_mel(speech), log_mel(speech))[0] == 0.0


def test_frames_truncate_to_the_shorter_signal(speech, noise):
    _, extra = mcd(speech, noise[: noise.size // 2])
    assert extra["n_frames"] == 1 + (noise.size // 2) // 160
    ref, deg = log_mel(speech), log_mel(noise)
    assert mcd_from_logmel(ref, deg[:50])[1]["n_frames"] == 50
    assert stoi(speech, np.concatenate([speech, noise])) > 0.99


def test_lsd_from_logmel_definition(speech, noise):
    ref, deg = log_mel(speech), log_mel(noise)
    value, extra = lsd_from_logmel(ref, deg)
    diff_db = 20 / np.log(10) * (ref.astype(np.float64) - deg)
    assert value == pytest.approx(np.mean(np.sqrt(np.mean(diff_db**2, axis=1))), rel=1e-9)
    assert extra["n_bins"] == 80
    assert lsd_from_logmel(ref, ref)[0] == 0.0


def test_bad_inputs_fail_clearly(speech):
    with pytest.raises(AudioError, match="1-D"):
        mcd(speech[None], speech)
    with pytest.raises(AudioError, match="NaN"):
        stoi(speech, np.full(100, np.nan))
    with pytest.raises(ValueError, match="order"):
        mcd_from_logmel(log_mel(speech), log_mel(speech), order=80)
    with pytest.raises(ValueError, match="mel bins"):
        mcd_from_logmel(np.zeros((4, 80)), np.zeros((4, 40)))


def test_griffin_lim_vocoder_copy(speech, noise):
    vocoder = GriffinLimVocoder(n_iter=16)
    assert vocoder.frame_rate == 100.0
    lm = log_mel(speech)
    copy = vocoder.synthesize(lm, length=speech.size)
    assert copy.dtype == np.float32 and copy.shape == speech.shape
    short = lm[:20]
    np.testing.assert_array_equal(vocoder.synthesize(short), vocoder.synthesize(short))
    assert vocoder.synthesize(short).shape == (19 * 160,)
    assert mcd(speech, copy)[0] < 0.5 * mcd(speech, noise)[0]
    assert stoi(speech, copy) > 0.6
    with pytest.raises(ValueError, match="shape"):
        vocoder.synthesize(lm[:, :40])
    with pytest.raises(ValueError, match="momentum"):
        GriffinLimVocoder(momentum=1.0)
