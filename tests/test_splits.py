"""Splits keep recordings (and sessions) on one side, so the attack is no easier than the threat model says."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from attacks.verification import trial_design
from audit.corpus import load_manifest
from audit.embeddings import corpus_grouping
from audit.errors import CorpusError
from audit.splits import Grouping, closed_set_split, partition_speaker
from tests.conftest import voice


def segmented_grouping(n_speakers: int, recordings: int, segments: int, sessions: int | None = None) -> Grouping:
    """Speakers x recordings x consecutive segments (3 s each); sessions group recordings when given."""
    spk, rec, ses, start = [], [], [], []
    for s in range(n_speakers):
        for r in range(recordings):
            for k in range(segments):
                spk.append(f"s{s}")
                rec.append(f"s{s}/r{r}.flac")
                ses.append(f"s{s}/c{r % sessions}" if sessions else f"s{s}/r{r}.flac")
                start.append(3.0 * k)
    return Grouping.of(spk, rec, ses, start)


def sides_of(grouping: Grouping, split, labels: np.ndarray) -> tuple[set, set]:
    return set(labels[split.train]), set(labels[split.test])


@pytest.mark.parametrize("seed", range(5))
def test_no_recording_is_on_both_sides_when_a_speaker_has_several(seed):
    g = segmented_grouping(n_speakers=6, recordings=5, segments=4)
    split = closed_set_split(g, test_fraction=0.3, val_fraction=0.2, seed=seed)
    train, test = sides_of(g, split, g.recordings)
    val = set(g.recordings[split.val])
    assert not (train & test or train & val or val & test)
    assert split.group_by == "recording" and not split.same_recording
    # every speaker is on every side (closed set)
    for idx in (split.train, split.val, split.test):
        assert set(g.speakers[idx]) == set(g.speakers)


def test_sessions_group_recordings_when_a_speaker_has_several_sessions():
    g = segmented_grouping(n_speakers=4, recordings=6, segments=2, sessions=3)
    split = closed_set_split(g, test_fraction=0.3, seed=0)
    train, test = sides_of(g, split, g.sessions)
    assert not train & test and split.group_by == "session"


def test_a_single_recording_is_cut_into_separate_stretches_with_a_gap():
    g = segmented_grouping(n_speakers=3, recordings=1, segments=6)
    split = closed_set_split(g, test_fraction=0.3, seed=0)
    assert split.same_recording == ("s0", "s1", "s2") and split.group_by == "same-recording stretch"
    assert "same-recording cues" in split.describe()["same_recording_note"]
    for spk in ("s0", "s1", "s2"):
        rows = np.flatnonzero(g.speakers == spk)
        test_k = sorted(int(g.starts[i] // 3) for i in split.test if i in rows)
        train_k = sorted(int(g.starts[i] // 3) for i in split.train if i in rows)
        # two contiguous stretches with exactly one segment left out between them
        assert test_k == list(range(test_k[0], test_k[-1] + 1))
        assert train_k == list(range(train_k[0], train_k[-1] + 1))
        assert train_k[0] - test_k[-1] == 2 and len(test_k) + len(train_k) == 5


def test_speakers_too_small_to_split_are_dropped_and_named():
    g = Grouping.of(["a", "a", "a", "b", "c", "c"], ["a1", "a2", "a3", "b1", "c1", "c1"], starts=[0, 0, 0, 0, 0, 3])
    split = closed_set_split(g, test_fraction=0.3, seed=0)
    # b has one utterance; c's single recording has two segments, too few for two stretches and a gap
    assert split.dropped_speakers == ("b", "c")
    with pytest.raises(CorpusError, match="closed-set split impossible"):
        closed_set_split(Grouping.of(["a", "b"]), seed=0)


def test_partition_needs_one_unit_per_side():
    g = segmented_grouping(n_speakers=1, recordings=2, segments=3)
    rows = np.arange(len(g))
    assert partition_speaker(rows, g, [0.3, 0.2], np.random.default_rng(0)) is None
    two = partition_speaker(rows, g, [0.3], np.random.default_rng(0))
    assert two is not None and two.unit == "recording" and all(s.size == 3 for s in two.sides)


def test_enrolment_and_trials_come_from_different_recordings():
    g = segmented_grouping(n_speakers=4, recordings=4, segments=3)
    design = trial_design(g, enroll_fraction=0.5, seed=0)
    for model, rows in enumerate(design.enrol):
        trials = design.trial_rows[design.trial_model == model]
        assert not set(g.recordings[rows]) & set(g.recordings[trials])
    single = trial_design(segmented_grouping(n_speakers=3, recordings=1, segments=5), seed=0)
    assert single.same_recording == ("s0", "s1", "s2")


def test_segments_keep_their_recording_and_session(tmp_path):
    (tmp_path / "audio").mkdir()
    rows = []
    for s in range(2):
        for r in range(2):
            rel = f"audio/s{s}_{r}.wav"
            sf.write(tmp_path / rel, voice(100 + 50 * s, 600, 7.0, seed=s * 10 + r), 16000)
            rows.append({"path": rel, "speaker": f"s{s}", "session": f"day{r}"})
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "speaker", "session"])
        writer.writeheader()
        writer.writerows(rows)
    corpus = load_manifest(tmp_path).segmented(3.0)
    assert len(corpus) == 8 and "session" not in corpus.utterances[0].attributes
    g = corpus_grouping(corpus)
    assert np.unique(g.recordings).size == 4 and np.unique(g.sessions).size == 4
    assert {u.session for u in corpus if u.speaker == "s0"} == {"s0/day0", "s0/day1"}
    split = closed_set_split(g, test_fraction=0.5, seed=0)
    assert not set(g.recordings[split.train]) & set(g.recordings[split.test])
