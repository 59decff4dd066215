"""Bad audio is rejected with the file named; good audio is decoded to 16 kHz mono."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from audit.audio import load_audio
from audit.errors import AudioError
from tests.conftest import voice


def test_stereo_44k_is_downmixed_and_resampled(tmp_path):
    wav = voice(120, 800, 1.0, seed=0, sr=44100)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([wav, 0.5 * wav], axis=1), 44100)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - 16000) <= 2


def test_span_reads_only_the_segment(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, voice(120, 800, 3.0, seed=1), 16000)
    assert load_audio(path, start=1.0, end=2.5).size == 24000


@pytest.mark.parametrize("case", ["empty", "silent", "corrupt", "missing", "too_long"])
def test_bad_audio_names_the_file(tmp_path, case):
    path = tmp_path / f"{case}.wav"
    if case == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    elif case == "silent":
        sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    elif case == "corrupt":
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    elif case == "too_long":
        sf.write(path, voice(120, 800, 3.0, seed=2), 16000)
    with pytest.raises(AudioError) as err:
        load_audio(path, max_seconds=2.0) if case == "too_long" else load_audio(path)
    assert str(path) in str(err.value)
    reason = {"empty": "empty", "silent": "silent", "corrupt": "unreadable", "missing": "not found",
              "too_long": "implausibly long"}[case]
    assert reason in str(err.value)


def test_nan_audio_rejected(tmp_path):
    path = tmp_path / "nan.wav"
    wav = voice(120, 800, 1.0, seed=3)
    wav[100] = np.nan
    sf.write(path, wav, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)
