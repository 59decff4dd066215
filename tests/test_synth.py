"""Tests for audit.synth: sentence plan, a tiny eSpeak NG corpus, determinism, caching, voices, errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.stats import f_oneway

from audit import synth
from audit.errors import CorpusError

TINY = {"n_voices": 3, "n_sentences": 2, "seed": 0, "progress": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.build_corpus(tmp_path_factory.mktemp("tiny") / "corpus", **TINY)


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _letters(sentence: str) -> int:
    return sum(c.isalpha() for c in sentence)


def test_sentences_are_plain_english() -> None:
    pool = synth.sentence_pool(2000, 0)
    assert len(pool) == 2000 and pool == synth.sentence_pool(4000, 0)[:2000]
    assert len({synth.to_transcript(s) for s in pool}) == len(pool)
    for sentence in pool:
        assert synth.MIN_WORDS <= len(sentence.split()) <= synth.MAX_WORDS, sentence
        assert re.fullmatch(r"[A-Z][A-Za-z' ,]*[.?]", sentence), sentence
    assert len({s.split()[0] for s in pool}) > 20, "sentences should not all open alike"


@pytest.mark.parametrize(("n_voices", "n_sentences"), [(24, 20), (40, 30)])
def test_plan_never_repeats_a_text(n_voices: int, n_sentences: int) -> None:
    plan = synth.sentence_plan(n_voices, n_sentences, 0)
    assert len(plan) == n_voices and all(len(v) == n_sentences for v in plan)
    transcripts = [synth.to_transcript(s) for v in plan for s in v]
    assert len(set(transcripts)) == n_voices * n_sentences


def test_plan_deterministic_per_seed() -> None:
    plan = synth.sentence_plan(24, 20, 0)
    assert plan == synth.sentence_plan(24, 20, 0)
    other = synth.sentence_plan(24, 20, 1)
    assert plan != other
    assert not {s for v in plan for s in v} >= {s for v in other for s in v}


def test_plan_lengths_do_not_depend_on_voice() -> None:
    plan = synth.sentence_plan(24, 20, 0)
    lengths = [[_letters(s) for s in v] for v in plan]
    assert f_oneway(*lengths).pvalue > 0.001
    means = [np.mean(v) for v in lengths]
    assert max(means) / min(means) < 1.1
    by_length = sorted(s for v in lengths for s in v)
    assert f_oneway(*np.array(by_length).reshape(24, 20)).pvalue < 1e-6, "check must catch lengths set by voice"


def test_plan_sentences_vary_within_voice() -> None:
    for sentences in synth.sentence_plan(24, 20, 0):
        lengths = [_letters(s) for s in sentences]
        assert lengths != sorted(lengths), "position within a voice must not encode length"
        assert len({s.split()[0] for s in sentences}) > 3


def test_plan_larger_than_pool_raises() -> None:
    limit = synth.POOL_SIZE // 24
    assert limit >= 20
    with pytest.raises(CorpusError, match=f"at most {limit} .*{synth.POOL_SIZE} distinct sentences"):
        synth.sentence_plan(24, limit + 1, 0)
    with pytest.raises(CorpusError, match="size"):
        synth.sentence_pool(synth.POOL_SIZE + 1, 0)


def test_settings_hash_covers_text() -> None:
    plan = synth.sentence_plan(3, 2, 0)
    changed = [list(v) for v in plan]
    changed[0][0] = "A different sentence was spoken here today."
    assert synth._settings(3, 2, 0, plan) == synth._settings(3, 2, 0, [list(v) for v in plan])
    assert synth._settings(3, 2, 0, plan)["content_sha1"] != synth._settings(3, 2, 0, changed)["content_sha1"]


def test_transcript_normalisation() -> None:
    assert synth.to_transcript("Don't forget,  the door!") == "DON'T FORGET THE DOOR"


def test_tiny_corpus_files_and_manifest(tiny: Path) -> None:
    with open(tiny / "manifest.csv", newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == ["path", "speaker", "transcript", "duration_s", "utt_id",
                      "gender", "voice", "pitch", "rate", "range"]
    rows = _rows(tiny)
    voices = synth.voice_grid(3, 0)
    assert len(rows) == 6
    assert sorted({r["speaker"] for r in rows}) == [v.speaker for v in voices]
    planned = [synth.to_transcript(s) for v in synth.sentence_plan(3, 2, 0) for s in v]
    assert [r["transcript"] for r in rows] == planned
    assert len(set(planned)) == 6
    for row, voice in zip(rows, [v for v in voices for _ in range(2)]):
        assert row["speaker"] == voice.speaker and row["gender"] == voice.gender
        assert row["voice"] == voice.voice and int(row["pitch"]) == voice.pitch
        assert int(row["rate"]) == voice.rate and int(row["range"]) == voice.pitch_range
        path = tiny / row["path"]
        assert path.parent == tiny / "audio" / row["speaker"] and path.stem == row["utt_id"]
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / 16000 - float(row["duration_s"])) < 1e-3
        wav, _ = sf.read(str(path), dtype="float32")
        assert 0.8 < np.max(np.abs(wav)) <= 0.91
        assert np.sqrt(np.mean(wav**2)) > 0.02
        assert 1.0 < float(row["duration_s"]) < 8.0
    settings = json.loads((tiny / "settings.json").read_text())
    assert settings["n_voices"] == 3 and settings["version"] == "v2"
    assert not [p for p in tiny.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_same_seed_gives_identical_audio(tiny: Path, tmp_path: Path) -> None:
    again = synth.build_corpus(tmp_path / "again", **TINY)
    assert (again / "manifest.csv").read_bytes() == (tiny / "manifest.csv").read_bytes()
    for row in _rows(tiny):
        assert (again / row["path"]).read_bytes() == (tiny / row["path"]).read_bytes(), row["path"]


def test_second_build_is_cache_hit(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object) -> np.ndarray:
        raise AssertionError("synthesize called on a cached corpus")

    monkeypatch.setattr(synth, "synthesize", fail)
    assert synth.build_corpus(tiny, **TINY) == tiny
    with pytest.raises(AssertionError, match="cached"):
        synth.build_corpus(tiny, **{**TINY, "seed": 1})
    assert (tiny / "manifest.csv").is_file(), "failed rebuild must leave the old corpus in place"


def test_voice_grid_distinct_and_deterministic() -> None:
    voices = synth.voice_grid(24, 0)
    assert len(voices) == 24 and voices == synth.voice_grid(24, 0)
    assert len({v.speaker for v in voices}) == 24
    assert len({(v.voice, v.pitch, v.rate, v.pitch_range) for v in voices}) == 24
    assert {v.gender for v in voices} == {"M", "F"}
    assert all(v.gender == ("F" if "+f" in v.voice else "M") for v in voices)
    assert synth.voice_grid(3, 0) == voices[:3]
    assert synth.voice_grid(24, 1) != voices


def test_default_corpus_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPEECH_AUDIT_CACHE", str(tmp_path))
    assert synth.default_corpus_dir() == tmp_path / "synthetic"
    monkeypatch.delenv("SPEECH_AUDIT_CACHE")
    assert synth.default_corpus_dir() == Path.home() / ".cache" / "speech-audit" / "synthetic"


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"n_voices": 1}, "n_voices"),
    ({"n_sentences": 0}, "n_sentences"),
    ({"n_sentences": synth.POOL_SIZE // 24 + 1}, f"n_sentences.*at most {synth.POOL_SIZE // 24}"),
    ({"n_voices": 2.5}, "n_voices"),
    ({"seed": "zero"}, "seed"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(CorpusError, match=name):
        synth.build_corpus(tmp_path / "bad", progress=False, **kwargs)
    assert not (tmp_path / "bad").exists()


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="refusing to overwrite"):
        synth.build_corpus(tmp_path, **TINY)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unknown_voice_raises() -> None:
    bad = synth.VoiceSpec("syn99", "M", "en-gb+m1", 50, 170, 50)
    with pytest.raises(CorpusError, match="en-gb"):
        synth.synthesize("Hello there.", bad)
