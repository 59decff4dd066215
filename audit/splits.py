"""Deterministic train/validation/test splits over utterance indices.

Two threat models need two kinds of split:

* utterance-level (closed-set speaker ID): every speaker appears in train and test, with
  different utterances held out;
* speaker-disjoint (open-set verification): test speakers are never seen in training.

Both are pure functions of the speaker labels and a seed, so a report can be reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from audit.errors import CorpusError


@dataclass(frozen=True)
class Split:
    """Index arrays into a corpus/store, plus the speakers left out and why."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    kind: str
    seed: int
    dropped_speakers: tuple[str, ...] = field(default=())

    def describe(self) -> dict:
        """JSON-friendly summary of the split sizes."""
        return {"kind": self.kind, "seed": self.seed, "n_train": int(self.train.size),
                "n_val": int(self.val.size), "n_test": int(self.test.size),
                "dropped_speakers": list(self.dropped_speakers)}


def _by_speaker(speakers: Sequence[str]) -> dict[str, np.ndarray]:
    labels = np.asarray(speakers)
    return {spk: np.flatnonzero(labels == spk) for spk in sorted(set(labels.tolist()))}


def _sorted_union(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)).astype(int) if parts else np.zeros(0, dtype=int)


def utterance_split(speakers: Sequence[str], *, test_fraction: float = 0.3, val_fraction: float = 0.0,
                    seed: int = 0, min_per_speaker: int = 2) -> Split:
    """Closed-set split: each speaker's utterances are shuffled and partly held out.

    Each kept speaker contributes at least one test utterance and at least one training
    utterance; with ``val_fraction > 0`` and enough utterances, also validation ones.
    Speakers with fewer than ``min_per_speaker`` utterances cannot be split and are dropped
    (named in ``dropped_speakers``).
    """
    if not 0 < test_fraction < 1:
        raise CorpusError(f"test_fraction={test_fraction!r} must be in (0, 1)")
    if not 0 <= val_fraction < 1 - test_fraction:
        raise CorpusError(f"val_fraction={val_fraction!r} must be in [0, 1 - test_fraction)")
    rng = np.random.default_rng(seed)
    train, val, test, dropped = [], [], [], []
    for spk, idx in _by_speaker(speakers).items():
        if idx.size < max(2, min_per_speaker):
            dropped.append(spk)
            continue
        idx = rng.permutation(idx)
        n_test = min(idx.size - 1, max(1, int(round(test_fraction * idx.size))))
        n_val = int(round(val_fraction * idx.size)) if val_fraction else 0
        n_val = min(n_val, idx.size - n_test - 1)
        if val_fraction and n_val == 0 and idx.size - n_test >= 2:
            n_val = 1
        test.append(idx[:n_test])
        val.append(idx[n_test:n_test + n_val])
        train.append(idx[n_test + n_val:])
    if not test:
        raise CorpusError(
            f"utterance-level split impossible: no speaker has >= {max(2, min_per_speaker)} utterances "
            "(use --segment SECONDS to cut long recordings into several segments)"
        )
    return Split(_sorted_union(train), _sorted_union(val), _sorted_union(test), "utterance", seed, tuple(dropped))


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
    pick = lambda sel: _sorted_union([groups[s] for s in sel])  # noqa: E731
    return Split(pick(names[n_test + n_val:]), pick(names[n_test:n_test + n_val]), pick(names[:n_test]),
                 "speaker-disjoint", seed)
