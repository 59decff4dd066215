"""Deterministic train/validation/test splits over utterance indices.

Three threat models need three kinds of split, all pure functions of the labels and a seed
so a report can be reproduced:

* closed-set (speaker ID): every speaker appears in train and test, with different
  *recordings* held out (:func:`closed_set_split`);
* speaker-disjoint (open-set verification, attributes, inversion): test speakers are never
  seen in training (:func:`speaker_disjoint_split`);
* within a speaker (enrolment vs trial, :func:`partition_speaker`): the same grouping rule
  as the closed-set split.

Grouping rule, per speaker (:func:`partition_speaker`): with more than one session the two
sides take whole sessions; else, with more than one recording, whole recordings (segments of
one file never straddle the cut); a speaker with a single recording can only be split inside
it, so each side takes a separate stretch of the recording in time order with one segment
left out between the stretches, and the split names that speaker in ``same_recording`` so the
report can say the figure includes same-recording cues.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from audit.errors import CorpusError


@dataclass(frozen=True)
class Grouping:
    """Per-row labels a split needs: speaker, recording, session and start time (seconds)."""

    speakers: np.ndarray
    recordings: np.ndarray
    sessions: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, speakers: Sequence[str], recordings: Sequence[str] | None = None,
           sessions: Sequence[str] | None = None, starts: Sequence[float] | None = None) -> "Grouping":
        """Labels with defaults: each row its own recording, session = recording, start 0."""
        spk = np.asarray(speakers).astype(str)
        rec = np.asarray(recordings).astype(str) if recordings is not None else np.array(
            [f"row{i}" for i in range(spk.size)])
        ses = np.asarray(sessions).astype(str) if sessions is not None else rec
        st = np.asarray(starts, dtype=float) if starts is not None else np.zeros(spk.size)
        if not spk.size == rec.size == ses.size == st.size:
            raise CorpusError(f"grouping labels differ in length: {spk.size}, {rec.size}, {ses.size}, {st.size}")
        return cls(spk, rec, ses, st)

    def __len__(self) -> int:
        return int(self.speakers.size)

    def subset(self, index: np.ndarray) -> "Grouping":
        """Rows ``index`` of every label."""
        return Grouping(self.speakers[index], self.recordings[index], self.sessions[index], self.starts[index])


@dataclass(frozen=True)
class Split:
    """Index arrays into a corpus/store, plus the speakers left out and why."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    kind: str
    seed: int
    dropped_speakers: tuple[str, ...] = field(default=())
    group_by: str = "speaker"
    same_recording: tuple[str, ...] = field(default=())

    def describe(self) -> dict:
        """JSON-friendly summary of the split sizes and grouping."""
        out = {"kind": self.kind, "seed": self.seed, "n_train": int(self.train.size),
               "n_val": int(self.val.size), "n_test": int(self.test.size), "group_by": self.group_by,
               "dropped_speakers": list(self.dropped_speakers)}
        if self.same_recording:
            out["same_recording_speakers"] = list(self.same_recording)
            out["same_recording_note"] = SAME_RECORDING_NOTE
        return out


SAME_RECORDING_NOTE = ("some speakers have a single recording, so both sides of their split come from it "
                       "(separate stretches, one segment left out between them): the figure includes "
                       "same-recording cues (channel, room, session) and may overstate leakage across recordings")


def _by_speaker(speakers: Sequence[str]) -> dict[str, np.ndarray]:
    labels = np.asarray(speakers).astype(str)
    return {spk: np.flatnonzero(labels == spk) for spk in sorted(set(labels.tolist()))}


def _sorted_union(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)).astype(int) if parts else np.zeros(0, dtype=int)


@dataclass(frozen=True)
class SpeakerPartition:
    """One speaker's rows cut into ``sides`` (row indices), the unit it grouped by."""

    sides: tuple[np.ndarray, ...]
    unit: str


def partition_speaker(rows: np.ndarray, grouping: Grouping, fractions: Sequence[float],
                      rng: np.random.Generator) -> SpeakerPartition | None:
    """Cut one speaker's ``rows`` into ``len(fractions) + 1`` non-empty sides (the last takes the rest).

    Sessions, else recordings, are the units when the speaker has more than one; whole units
    are shuffled (``rng``) and dealt to the sides so each side ``k < last`` takes about
    ``fractions[k]`` of the rows. A single recording is cut into stretches in time order with
    one row left out between neighbouring stretches. Returns None when the rows cannot give
    every side at least one row (too few units or segments).
    """
    n_sides = len(fractions) + 1
    n_recordings = np.unique(grouping.recordings[rows]).size
    for unit, labels in (("session", grouping.sessions), ("recording", grouping.recordings)):
        names = np.unique(labels[rows])
        if unit == "session" and names.size == n_recordings:
            continue  # every recording is its own session: group by recording
        if names.size > 1:
            if names.size < n_sides:
                return None
            names = names[rng.permutation(names.size)]
            sizes = np.array([np.count_nonzero(labels[rows] == n) for n in names])
            sides, pos = [], 0
            for k, frac in enumerate(fractions):
                want, took, chosen = frac * rows.size, 0, []
                # Leave at least one unit for every later side.
                while pos < names.size - (n_sides - 1 - k) and (not chosen or took + sizes[pos] / 2 < want):
                    chosen.append(names[pos])
                    took += sizes[pos]
                    pos += 1
                sides.append(rows[np.isin(labels[rows], chosen)])
            sides.append(rows[np.isin(labels[rows], names[pos:])])
            return SpeakerPartition(tuple(np.sort(s) for s in sides), unit)
    order = rows[np.argsort(grouping.starts[rows], kind="stable")]
    gaps = n_sides - 1
    usable = order.size - gaps
    if usable < n_sides:
        return None
    counts = [max(1, int(round(f * usable))) for f in fractions]
    counts.append(usable - sum(counts))
    while counts[-1] < 1:
        k = int(np.argmax(counts[:-1]))
        counts[k] -= 1
        counts[-1] += 1
    # Held-out sides come first in time, the training stretch (the last side) is the rest.
    sides, pos = [], 0
    for c in counts:
        sides.append(order[pos:pos + c])
        pos += c + 1
    return SpeakerPartition(tuple(np.sort(s) for s in sides), "same-recording stretch")


def closed_set_split(grouping: Grouping, *, test_fraction: float = 0.3, val_fraction: float = 0.0,
                     seed: int = 0) -> Split:
    """Closed-set split: each speaker's sessions/recordings are divided between test (and val) and train.

    See :func:`partition_speaker` for the grouping. Each kept speaker contributes at least
    one test and one training row (and one validation row when ``val_fraction > 0``); speakers
    that cannot be split are dropped and named in ``dropped_speakers``.
    """
    if not 0 < test_fraction < 1:
        raise CorpusError(f"test_fraction={test_fraction!r} must be in (0, 1)")
    if not 0 <= val_fraction < 1 - test_fraction:
        raise CorpusError(f"val_fraction={val_fraction!r} must be in [0, 1 - test_fraction)")
    rng = np.random.default_rng(seed)
    fractions = [test_fraction] + ([val_fraction] if val_fraction else [])
    train, val, test, dropped, same, units = [], [], [], [], [], set()
    for spk, idx in _by_speaker(grouping.speakers).items():
        part = partition_speaker(idx, grouping, fractions, rng)
        if part is None:
            dropped.append(spk)
            continue
        units.add(part.unit)
        test.append(part.sides[0])
        if val_fraction:
            val.append(part.sides[1])
        train.append(part.sides[-1])
        if part.unit == "same-recording stretch":
            same.append(spk)
    if not test:
        raise CorpusError(
            f"closed-set split impossible: no speaker has enough recordings or segments for "
            f"{len(fractions) + 1} parts (use --segment SECONDS to cut long recordings into segments)"
        )
    return Split(_sorted_union(train), _sorted_union(val), _sorted_union(test), "closed-set", seed,
                 tuple(dropped), "+".join(sorted(units)), tuple(same))


def utterance_split(speakers: Sequence[str], *, test_fraction: float = 0.3, val_fraction: float = 0.0,
                    seed: int = 0) -> Split:
    """:func:`closed_set_split` where every row is its own recording (plain per-utterance split)."""
    return closed_set_split(Grouping.of(speakers), test_fraction=test_fraction, val_fraction=val_fraction,
                            seed=seed)


def speaker_disjoint_split(speakers: Sequence[str], *, test_fraction: float = 0.5, val_fraction: float = 0.0,
                           seed: int = 0, min_test_speakers: int = 2) -> Split:
    """Open-set split: whole speakers go to train, validation or test.

    Raises :class:`CorpusError` when fewer than ``min_test_speakers`` speakers would be
    tested or fewer than two would remain for training.
    """
    groups = _by_speaker(speakers)
    names = np.array(sorted(groups))
    rng = np.random.default_rng(seed)
    names = names[rng.permutation(names.size)]
    n_test = max(min_test_speakers, int(math.ceil(test_fraction * names.size)))
    n_val = int(round(val_fraction * names.size))
    if names.size - n_test - n_val < 2:
        raise CorpusError(
            f"speaker-disjoint split impossible: {names.size} speakers, need >= {min_test_speakers} "
            f"test speakers and >= 2 training speakers (test_fraction={test_fraction})"
        )

    def pick(sel: np.ndarray) -> np.ndarray:
        return _sorted_union([groups[s] for s in sel])

    return Split(pick(names[n_test + n_val:]), pick(names[n_test:n_test + n_val]), pick(names[:n_test]),
                 "speaker-disjoint", seed)
