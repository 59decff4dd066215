"""Corpus loaders (manifest, LibriSpeech, synthetic), filters, segmenting and splits."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from audit.corpus import Corpus, Utterance, load_corpus, load_librispeech, load_manifest, speech_rate
from audit.errors import CorpusError
from audit.splits import speaker_disjoint_split, utterance_split
from tests.conftest import shared_corpus, voice


def test_manifest_loader_reads_rows_and_attributes(tone_corpus):
    corpus = load_manifest(tone_corpus)
    assert len(corpus) == 24 and len(set(corpus.speakers)) == 4
    u = corpus.utterances[0]
    assert u.transcript == "HELLO WORLD" and u.attributes["gender"] == "M"
    assert speech_rate(u) == pytest.approx(10 / u.duration)


def test_a_copy_elsewhere_keeps_the_listing_fingerprint_and_changes_the_store_key(tone_corpus, tmp_path):
    import shutil

    original = load_manifest(tone_corpus)
    copy = load_manifest(shutil.copytree(tone_corpus, tmp_path / "elsewhere" / "corpus"))
    assert copy.listing_fingerprint() == original.listing_fingerprint()
    assert copy.fingerprint() != original.fingerprint()  # the store is keyed by paths and mtimes
    relabelled = (tone_corpus / "manifest.csv").read_text(encoding="utf-8").replace("HELLO WORLD", "HELLO THERE", 1)
    (tone_corpus / "manifest.csv").write_text(relabelled, encoding="utf-8")
    assert load_manifest(tone_corpus).listing_fingerprint() != original.listing_fingerprint()


def test_manifest_missing_file_names_the_row(tone_corpus):
    (tone_corpus / "audio" / "spk1_2.wav").unlink()
    with pytest.raises(CorpusError, match=r"manifest.csv:\d+: audio file not found: .*spk1_2.wav"):
        load_manifest(tone_corpus)


def test_shared_librispeech_manifest_and_where():
    corpus = load_corpus(str(shared_corpus("librispeech_subset"))).where(["subset=test-other"])
    assert len(corpus) == 100 and len(set(corpus.speakers)) == 10
    assert all(u.transcript for u in corpus)
    with pytest.raises(CorpusError, match="unknown column 'nope'"):
        corpus.where(["nope=1"])


def _fake_librispeech(root, with_transcripts=True):
    for spk, chapter, gender in (("19", "198", "F"), ("26", "495", "M")):
        folder = root / spk / chapter
        folder.mkdir(parents=True)
        lines = []
        for k in range(3):
            uid = f"{spk}-{chapter}-{k:04d}"
            sf.write(folder / f"{uid}.flac", voice(100 + int(spk), 700, 1.2, seed=k), 16000)
            lines.append(f"{uid} SOME WORDS NUMBER {k}")
        if not with_transcripts:
            lines = lines[:-1]
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "SPEAKERS.TXT").write_text(";ID |SEX| SUBSET | MINUTES | NAME\n19 | F | dev-clean | 25 | A\n"
                                       "26 | M | dev-clean | 25 | B\n")


def test_librispeech_loader(tmp_path):
    _fake_librispeech(tmp_path)
    corpus = load_corpus(f"librispeech:{tmp_path}")
    assert len(corpus) == 6
    u = corpus.utterances[0]
    assert u.utt_id == "19-198-0000" and u.speaker == "19" and u.transcript == "SOME WORDS NUMBER 0"
    assert u.attributes["gender"] == "F" and u.duration == pytest.approx(1.2, abs=1e-3)


def test_librispeech_missing_transcript_names_the_file(tmp_path):
    _fake_librispeech(tmp_path, with_transcripts=False)
    with pytest.raises(CorpusError, match=r"19-198-0002.flac: no transcript line"):
        load_librispeech(tmp_path)


def test_unreachable_librispeech_says_how_to_get_it(tmp_path):
    with pytest.raises(CorpusError, match="openslr"):
        load_corpus(f"librispeech:{tmp_path / 'LibriSpeech' / 'dev-clean'}")


def test_synthetic_spec_loads_the_generated_corpus(tmp_path, monkeypatch):
    import audit.synth as synth

    folder = synth.build_corpus(tmp_path / "syn", n_voices=3, n_sentences=2, seed=0, progress=False)
    monkeypatch.setattr(synth, "ensure_default_corpus", lambda seed=0, progress=True: folder)
    corpus = load_corpus("synthetic")
    assert corpus.name == "synthetic" and len(corpus) == 6 and len(set(corpus.speakers)) == 3
    assert all(u.transcript for u in corpus)


def test_segmenting_keeps_speaker_and_attributes(tmp_path):
    sf.write(tmp_path / "a.wav", voice(110, 600, 10.0, seed=0), 16000)
    sf.write(tmp_path / "b.wav", voice(150, 900, 2.0, seed=1), 16000)
    (tmp_path / "manifest.csv").write_text("path,speaker,transcript,gender\na.wav,s1,SOME TEXT,F\nb.wav,s2,,M\n")
    seg = load_manifest(tmp_path).segmented(3.0)
    a = [u for u in seg if u.speaker == "s1"]
    assert [round(u.start, 3) for u in a] == [0.0, 3.0, 6.0]
    assert a[-1].end == pytest.approx(9.0) and all(u.attributes["gender"] == "F" for u in a)
    assert all(u.transcript is None for u in a)
    assert len([u for u in seg if u.speaker == "s2"]) == 1


def test_utterance_split_is_deterministic_and_closed_set():
    speakers = np.repeat([f"s{i}" for i in range(5)], 8).tolist() + ["lonely"]
    a = utterance_split(speakers, test_fraction=0.25, val_fraction=0.25, seed=3)
    b = utterance_split(speakers, test_fraction=0.25, val_fraction=0.25, seed=3)
    assert all(np.array_equal(x, y) for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)))
    labels = np.array(speakers)
    assert set(labels[a.test]) == set(labels[a.train]) == {f"s{i}" for i in range(5)}
    assert not set(a.train) & set(a.test) and not set(a.val) & set(a.test)
    assert a.dropped_speakers == ("lonely",)
    assert utterance_split(speakers, seed=4).test.tolist() != a.test.tolist()


def test_speaker_disjoint_split_never_leaks_speakers():
    speakers = np.repeat([f"s{i}" for i in range(12)], 5)
    for seed in range(5):
        sp = speaker_disjoint_split(speakers, test_fraction=0.3, val_fraction=0.2, seed=seed)
        parts = [set(speakers[i]) for i in (sp.train, sp.val, sp.test)]
        assert not parts[0] & parts[2] and not parts[1] & parts[2] and not parts[0] & parts[1]
        assert sum(len(p) for p in parts) == 12


def test_impossible_splits_name_the_setting():
    with pytest.raises(CorpusError, match="speaker-disjoint split impossible"):
        speaker_disjoint_split(["a", "a", "b"], min_test_speakers=2)
    with pytest.raises(CorpusError, match="--segment"):
        utterance_split(["a", "b", "c"])


@given(ids=st.lists(st.text(alphabet="ab_seg0123", min_size=1, max_size=10), min_size=1, max_size=8, unique=True),
       seconds=st.lists(st.floats(0.3, 5.0), min_size=8, max_size=8), segment=st.floats(0.25, 2.0))
def test_segment_ids_stay_unique(ids, seconds, segment):
    corpus = Corpus("c", [Utterance(u, f"/x/{i}.wav", "s", None, seconds[i]) for i, u in enumerate(ids)])
    cut = corpus.segmented(segment)
    assert len({u.utt_id for u in cut}) == len(cut)


def _manifest(folder, body: bytes):
    """A manifest folder holding ``body`` as manifest.csv and one valid clip, a.wav."""
    folder.mkdir()
    sf.write(folder / "a.wav", 0.1 * np.ones(1600, np.float32), 16000)
    (folder / "manifest.csv").write_bytes(body)
    return folder


@pytest.mark.parametrize("body, message", [
    ("path,speaker,transcript\na.wav,s1,H\xc9LLO\n".encode("latin-1"), r"manifest.csv:2: not UTF-8 \(byte 0xc9"),
    (b"path,speaker,duration_s\na.wav,s1,nan\n", r"manifest.csv:2: bad duration_s 'nan'"),
    (b"path,speaker,duration_s\na.wav,s1,inf\n", r"manifest.csv:2: bad duration_s 'inf'"),
    (b"path,speaker,duration_s\na.wav,s1,-2\n", r"manifest.csv:2: bad duration_s '-2'"),
    (b"path,speaker\n../a.wav,s1\n", r"manifest.csv:2: relative path '../a.wav' resolves outside"),
    (b"path,speaker,utt_id\na.wav,s1,x\x00y\n", r"manifest.csv:2: NUL character"),
    (b"path,speaker\na.wav,s1,extra\n", r"manifest.csv:2: more fields than the header's 2 columns"),
    (b"path,speaker\na.wav,s1\na.wav,s2\n", r"manifest.csv:3: duplicate utt_id 'a'"),
])
def test_bad_manifests_name_the_row(tmp_path, body, message):
    with pytest.raises(CorpusError, match=message) as err:
        load_manifest(_manifest(tmp_path / "m", body))
    assert "\n" not in str(err.value)


def test_a_byte_order_mark_is_dropped(tmp_path):
    corpus = load_manifest(_manifest(tmp_path / "m", b"\xef\xbb\xbfpath,speaker\na.wav,s1\n"))
    assert corpus.utterances[0].speaker == "s1" and corpus.utterances[0].utt_id == "a"
