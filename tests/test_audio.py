"""Bad audio is rejected with the file named; good audio is decoded to 16 kHz mono."""

from __future__ import annotations

import re

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


def _corpus_with_bad_files(folder):
    from tests.conftest import write_tone_corpus

    corpus = write_tone_corpus(folder, n_speakers=4, n_utts=5)
    (corpus / "audio" / "spk0_0.wav").write_bytes(b"RIFF0000WAVEjunk")
    sf.write(corpus / "audio" / "spk1_0.wav", np.zeros(8000, np.float32), 16000)
    sf.write(corpus / "audio" / "spk2_0.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    return corpus


def test_every_bad_file_is_named_at_once_before_any_model_work(tmp_path, monkeypatch):
    from audit.cli import main

    monkeypatch.setenv("SPEECH_AUDIT_CACHE", str(tmp_path / "cache"))
    corpus = _corpus_with_bad_files(tmp_path / "c")
    args = ["run", "--model", "tiny-random-wav2vec2", "--corpus", str(corpus), "--no-progress", "--quick",
            "--cache-dir", str(tmp_path / "store"), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert not (tmp_path / "store").exists()  # refused before extraction


def test_bad_audio_message_lists_each_file_with_its_reason(tmp_path, monkeypatch):
    from audit.audio_check import check_corpus_audio
    from audit.corpus import load_manifest

    monkeypatch.setenv("SPEECH_AUDIT_CACHE", str(tmp_path / "cache"))
    corpus = load_manifest(_corpus_with_bad_files(tmp_path / "c"))
    with pytest.raises(AudioError) as err:
        check_corpus_audio(corpus)
    text = str(err.value)
    assert "\n" not in text and text.startswith("3 of 20 audio files")
    for name, reason in (("spk0_0.wav", "unreadable"), ("spk1_0.wav", "silent"), ("spk2_0.wav", "NaN")):
        assert re.search(rf"{name}: [^;]*{reason}", text), (name, text)
    kept, bad = check_corpus_audio(corpus, skip_bad=True)
    assert len(kept) == 17 and sorted(b.path.rsplit("/", 1)[-1] for b in bad) == ["spk0_0.wav", "spk1_0.wav",
                                                                                  "spk2_0.wav"]


def test_skip_bad_audio_records_the_dropped_files_and_weakens(tmp_path, monkeypatch):
    from audit.config import config_from_dict
    from audit.pipeline import AuditPipeline

    monkeypatch.setenv("SPEECH_AUDIT_CACHE", str(tmp_path / "cache"))
    corpus = _corpus_with_bad_files(tmp_path / "c")
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(tmp_path / "r"),
                            "cache_dir": str(tmp_path / "s"), "progress": False, "layers": [1],
                            "skip_bad_audio": True, "attacks": ["speaker_id"],
                            "speaker_id": {"attackers": ["logreg"], "n_boot": 200}})
    with pytest.warns(UserWarning, match="skip-bad-audio: 3 of 20"):
        results = AuditPipeline(cfg).run()
    assert len(results["skipped_audio"]) == 3 and results["corpus"]["n_utterances"] == 17
    assert any(w["kind"] == "skipped_audio" and w["text"].startswith("--skip-bad-audio: 3 of 20")
               for w in results["weakened"])
    assert "Left out for bad audio" in (tmp_path / "r" / "summary.md").read_text()
