"""Tests for audit.vad: voiced duration of padded eSpeak NG speech, silence, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from audit import synth, vad
from audit.errors import AudioError, CorpusError

SR = 16000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synth.synthesize("The old farmer found a silver key behind the library.", synth.voice_grid(2, 0)[0])


def _speech_seconds(wav: np.ndarray) -> float:
    """Duration of the synthesised clip without the silence :func:`synth.synthesize` pads it with."""
    return len(wav) / SR - 2 * synth.PAD_SECONDS


@pytest.mark.parametrize("noise", [0.0, 1e-3, 1e-2])
def test_padded_speech_reads_speech_part(speech: np.ndarray, noise: float) -> None:
    pad = np.zeros(2 * SR, dtype=np.float32)
    wav = np.concatenate([pad, speech, pad])
    wav = wav + noise * np.random.default_rng(0).standard_normal(wav.size).astype(np.float32)
    voiced = vad.voiced_seconds(wav, SR)
    assert abs(voiced - _speech_seconds(speech)) < 0.3, (voiced, _speech_seconds(speech), len(wav) / SR)


def test_speech_is_detected_and_gap_filling_only_adds(speech: np.ndarray) -> None:
    raw = vad.voiced_seconds(speech, SR, fill_gap_ms=0)
    assert raw > 0.8 * _speech_seconds(speech)
    assert vad.voiced_seconds(speech, SR) >= raw


def test_other_rates_and_frames(speech: np.ndarray) -> None:
    from audit.audio import resample

    expected = _speech_seconds(speech)
    assert abs(vad.voiced_seconds(resample(speech, SR, 8000), 8000, frame_ms=10) - expected) < 0.3
    assert abs(vad.voiced_seconds(speech, SR, frame_ms=20, aggressiveness=3) - expected) < 0.3


def test_pause_longer_than_gap_is_not_counted(speech: np.ndarray) -> None:
    wav = np.concatenate([speech, np.zeros(SR, dtype=np.float32), speech])
    assert abs(vad.voiced_seconds(wav, SR) - 2 * _speech_seconds(speech)) < 0.4


def test_silence_reads_zero() -> None:
    assert vad.voiced_seconds(np.zeros(3 * SR, dtype=np.float32), SR) == 0.0
    quiet = 1e-3 * np.random.default_rng(1).standard_normal(3 * SR)
    assert vad.voiced_seconds(quiet, SR) < 0.2
    assert vad.voiced_seconds(np.zeros(100, dtype=np.float32), SR) == 0.0


def test_fill_gaps() -> None:
    frames = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0], dtype=bool)
    assert vad._fill_gaps(frames, 2).astype(int).tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0]
    assert vad._fill_gaps(frames, 0).tolist() == frames.tolist()


def test_duration_source_names_method() -> None:
    assert vad.DURATION_SOURCE.startswith("webrtcvad")
    assert f"{vad.FRAME_MS} ms" in vad.DURATION_SOURCE


@pytest.mark.parametrize(("wav", "match"), [
    (np.zeros((2, SR), dtype=np.float32), "1-D"),
    (np.array([0.0, np.nan] * SR, dtype=np.float32), "NaN"),
    (np.zeros(SR, dtype=np.int16), "floating point"),
    (np.zeros(0, dtype=np.float32), "empty"),
])
def test_bad_audio_raises(wav: np.ndarray, match: str) -> None:
    with pytest.raises(AudioError, match=match):
        vad.voiced_seconds(wav, SR)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sample_rate": 22050}, "sample_rate"),
    ({"sample_rate": 16000.0}, "sample_rate"),
    ({"frame_ms": 25}, "frame_ms"),
    ({"aggressiveness": 4}, "aggressiveness"),
    ({"fill_gap_ms": -1}, "fill_gap_ms"),
])
def test_bad_settings_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(CorpusError, match=match):
        vad.voiced_seconds(np.zeros(SR, dtype=np.float32), **kwargs)
