"""Tests of the inversion attack's signal metrics (MCD, LSD, STOI) and the Griffin-Lim vocoder."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.fft import dct

from audit.errors import AudioError
from audit.signal_metrics import (
    MCD_SETTINGS,
    MEL_SETTINGS,
    STOI_MIN_FRAMES,
    cepstrum_from_logmel,
    log_mel_spectrogram,
    log_spectral_distance,
    logmel_cepstral_distance,
    lsd_from_logmel,
    mcd,
    mcd_from_mcep,
    mel_cepstrum_sptk,
    stoi,
    stoi_frames,
)
from audit.vocoder import GriffinLimVocoder, log_mel

SR = 16000
DB_SQRT2 = 10 / math.log(10) * math.sqrt(2)
"""MCD of one frame whose cepstra differ by 1.0 in one coefficient d >= 1 (6.1419 dB)."""

LIBRI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "librispeech_subset"


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


def _pysptk():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import pysptk
    return pysptk


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


# ---------------------------------------------------------------- textbook MCD (pysptk)


def test_mcd_from_mcep_hand_values():
    zero = np.zeros(25)
    one_coefficient = zero.copy()
    one_coefficient[7] = 1.0
    value, extra = mcd_from_mcep(zero, one_coefficient)
    assert value == pytest.approx(DB_SQRT2, rel=1e-12) and value == pytest.approx(6.1419, abs=1e-4)
    assert (extra["n_frames"], extra["order"]) == (1, 24)
    gain_only = zero.copy()
    gain_only[0] = 5.0
    assert mcd_from_mcep(zero, gain_only)[0] == 0.0
    # two frames: |diff| = 1 (d = 1) and 5 (3 and 4 in d = 2, 3), c0 differences ignored
    ref = np.zeros((2, 25))
    deg = np.array([[9.0, 1.0] + [0.0] * 23, [-2.0, 0.0, 3.0, 4.0] + [0.0] * 21])
    value, extra = mcd_from_mcep(ref, deg)
    assert value == pytest.approx(DB_SQRT2 * (1 + 5) / 2, rel=1e-12)
    np.testing.assert_allclose(extra["per_frame"], [DB_SQRT2, 5 * DB_SQRT2])
    assert extra["per_frame_max"] == pytest.approx(5 * DB_SQRT2)
    # frames are cut to the shorter sequence (no DTW)
    assert mcd_from_mcep(ref, deg[:1])[1]["n_frames"] == 1
    with pytest.raises(ValueError, match="coefficients"):
        mcd_from_mcep(np.zeros((3, 25)), np.zeros((3, 24)))
    with pytest.raises(ValueError, match="NaN"):
        mcd_from_mcep(np.full(25, np.nan), zero)


def test_mel_cepstrum_sptk_matches_a_direct_pysptk_call(speech):
    pysptk = _pysptk()
    c = mel_cepstrum_sptk(speech)
    n_frames = 1 + (speech.size - 1024) // 256
    assert c.shape == (n_frames, 25) and c.dtype == np.float64
    window = pysptk.sptk.hamming(1024)
    x = speech.astype(np.float64) * 32768.0
    for t in (0, 17, n_frames - 1):
        frame = x[t * 256 : t * 256 + 1024] * window
        direct = pysptk.mcep(frame, order=24, alpha=0.42, eps=1e-6, etype=1)
        np.testing.assert_allclose(c[t], direct, rtol=1e-10, atol=1e-12)
    short = mel_cepstrum_sptk(speech[:700], order=12)
    padded = np.concatenate([x[:700], np.zeros(324)]) * window
    np.testing.assert_allclose(short[0], pysptk.mcep(padded, 12, 0.42, eps=1e-6, etype=1), rtol=1e-10)
    assert short.shape == (1, 13)


def test_identical_signals_score_perfectly(speech):
    value, extra = mcd(speech, speech)
    assert value == 0.0
    assert extra["order"] == 24 and extra["n_frames"] == 1 + (speech.size - 1024) // 256
    for words in ("pysptk", "order 24", "alpha 0.42", "FFT 1024", "hop 256", "Hamming", "c0 excluded", "no DTW"):
        assert words in extra["definition"]
    assert MCD_SETTINGS.to_dict()["definition"] == extra["definition"]
    assert log_spectral_distance(speech, speech)[0] == 0.0
    assert stoi(speech, speech) > 0.99
    assert stoi(speech, speech, extended=True) > 0.99


def test_mcd_matches_definition_by_hand(speech, noise):
    a, b = mel_cepstrum_sptk(speech), mel_cepstrum_sptk(noise)
    expected = np.mean(10 / np.log(10) * np.sqrt(2 * np.sum((a[:, 1:] - b[:, 1:]) ** 2, axis=1)))
    value, extra = mcd(speech, noise)
    assert value == pytest.approx(expected, rel=1e-12)
    assert extra["per_frame_median"] == pytest.approx(np.median(extra["per_frame"]))


def test_mcd_grows_with_added_noise(speech):
    rng = np.random.default_rng(2)
    white = rng.standard_normal(speech.size)
    values = [mcd(speech, (speech + level * white).astype(np.float32))[0] for level in (0.001, 0.01, 0.1)]
    assert 0.0 < values[0] < values[1] < values[2]


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


def test_mcd_frames_truncate_to_the_shorter_signal(speech, noise):
    half = noise[: noise.size // 2]
    assert mcd(speech, half)[1]["n_frames"] == 1 + (half.size - 1024) // 256
    assert stoi(speech, np.concatenate([speech, noise])) > 0.99


# ---------------------------------------------------------------- STOI on clips too short or silent to measure


def _mostly_silent(speech: np.ndarray, loud_seconds: float = 0.15) -> np.ndarray:
    """``speech``'s first ``loud_seconds`` then 60 dB quieter: too few frames survive pystoi's 40 dB cut."""
    out = speech.copy()
    out[int(loud_seconds * SR):] *= 1e-3
    return out


def test_stoi_frames_is_pystois_own_criterion(speech):
    """The frame count decides exactly where pystoi gives up (it warns and returns 1e-5 below 30 frames)."""
    import importlib

    from pystoi import stoi as pystoi

    assert STOI_MIN_FRAMES == importlib.import_module("pystoi.stoi").N
    rng = np.random.default_rng(3)
    for n in range(5600, 6600, 25):  # 0.35-0.41 s of noise: around the 30-frame boundary
        ref = 0.1 * rng.standard_normal(n)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = pystoi(ref, ref, SR)
        gave_up = any("Not enough STFT frames" in str(w.message) for w in caught)
        assert gave_up == (stoi_frames(ref, ref) < STOI_MIN_FRAMES), n
        assert (value == 1e-5) == gave_up
    assert stoi_frames(speech, speech) > STOI_MIN_FRAMES > stoi_frames(_mostly_silent(speech), speech)


def test_unmeasurable_stoi_is_none_without_pystois_warning(speech):
    quiet, short, tiny = _mostly_silent(speech), speech[: int(0.3 * SR)], speech[:200]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pystoi's RuntimeWarning (or any other) would fail the test
        for ref in (quiet, short, tiny):  # tiny: shorter than one pystoi frame, where pystoi itself crashes
            assert stoi(ref, ref) is None and stoi(ref, ref, extended=True) is None
        assert stoi(speech, speech) > 0.99


def test_signal_scores_leave_unmeasurable_clips_out_and_warn_once(speech, noise):
    from audit.judges import signal_scores

    other = _speechlike(seed=5)
    degraded = [(w + 0.5 * noise[: w.size]).astype(np.float32) for w in (speech, other)]
    base = signal_scores([speech, other], degraded, n_boot=200)
    quiet, short = _mostly_silent(_speechlike(seed=6)), _speechlike(seconds=0.3, seed=7)
    originals = [speech, quiet, other, short]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mixed = signal_scores(originals, [degraded[0], quiet, degraded[1], short], n_boot=200)
    for key in ("stoi", "estoi"):  # the same numbers (ESTOI's pystoi dither moves the 16th digit)
        assert mixed[key] == pytest.approx(base[key], rel=1e-12)
        assert mixed[f"{key}_ci95"] == pytest.approx(base[f"{key}_ci95"], rel=1e-12)
        assert mixed["per_utterance"][key][1] is None and mixed["per_utterance"][key][3] is None
    assert mixed["mcd_db"] != base["mcd_db"]  # the other scores still see all four clips
    assert (mixed["stoi_not_measurable"], mixed["stoi_n_utterances"]) == (2, 4)
    assert base["stoi_not_measurable"] == 0 and base["stoi_note"] is None
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1 and "\n" not in lines[0] and lines[0].startswith("2 of 4 clips not measurable")
    assert lines[0] == mixed["stoi_note"]
    with pytest.warns(UserWarning, match="no clip left"):
        none = signal_scores([quiet, short], [quiet, short], n_boot=50)
    assert none["stoi"] is None and none["estoi"] is None and none["stoi_ci95"] is None
    assert none["stoi_not_measurable"] == 2 and "no clip left" in none["stoi_note"]


# ---------------------------------------------------------------- log-mel distances (own scale)


def test_logmel_cepstrum_is_orthonormal_dct_without_c0(speech):
    lm = log_mel_spectrogram(speech)
    c = cepstrum_from_logmel(lm, order=24)
    assert c.shape == (lm.shape[0], 24)
    np.testing.assert_allclose(c, dct(lm.astype(np.float64), type=2, norm="ortho", axis=1)[:, 1:25])
    constant = cepstrum_from_logmel(np.full((3, 80), -2.0))
    np.testing.assert_allclose(constant, 0.0, atol=1e-12)


def test_logmel_cepstral_distance_definition(speech, noise):
    ref, deg = log_mel(speech), log_mel((speech + 0.3 * noise).astype(np.float32))
    value, extra = logmel_cepstral_distance(ref, deg)
    a, b = cepstrum_from_logmel(ref), cepstrum_from_logmel(deg)
    assert value == pytest.approx(np.mean(10 / np.log(10) * np.sqrt(2 * np.sum((a - b) ** 2, axis=1))), rel=1e-9)
    assert (extra["order"], extra["n_frames"]) == (24, ref.shape[0])
    assert logmel_cepstral_distance(ref, ref)[0] == 0.0
    assert logmel_cepstral_distance(ref, deg[:50])[1]["n_frames"] == 50


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
    with pytest.raises(ValueError, match="power of two"):
        mcd(speech, speech, n_fft=1000)
    with pytest.raises(ValueError, match="alpha"):
        mel_cepstrum_sptk(speech, alpha=1.0)
    with pytest.raises(ValueError, match="order"):
        mel_cepstrum_sptk(speech, order=0)
    with pytest.raises(ValueError, match="order"):
        logmel_cepstral_distance(log_mel(speech), log_mel(speech), order=80)
    with pytest.raises(ValueError, match="mel bins"):
        logmel_cepstral_distance(np.zeros((4, 80)), np.zeros((4, 40)))


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


@pytest.mark.slow
def test_mcd_of_real_speech_is_on_the_published_scale():
    """Griffin-Lim copy of a LibriSpeech test-other clip: a few dB (published vocoder MCDs are 1-3 dB).

    White noise at amplitude 0.01 on the same clip reads several times more.
    The log-mel cepstral distance of the same pairs is on its own, larger scale.
    """
    if not (LIBRI / "manifest.csv").is_file():
        pytest.skip(f"shared data {LIBRI} not present")
    from audit.audio import load_audio

    with open(LIBRI / "manifest.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["utt_id"] == "1688-142285-0004")
    wav = load_audio(LIBRI / row["path"])
    vocoder = GriffinLimVocoder()
    copy = vocoder.synthesize(vocoder.analyze(wav), length=wav.size)
    noisy = (wav + 0.01 * np.random.default_rng(0).standard_normal(wav.size)).astype(np.float32)
    copy_mcd, noisy_mcd = mcd(wav, copy)[0], mcd(wav, noisy)[0]
    assert 1.0 < copy_mcd < 3.5
    assert noisy_mcd > 2.5 * copy_mcd
    assert logmel_cepstral_distance(log_mel(wav), log_mel(copy))[0] > 2.0 * copy_mcd
