"""EmbeddingSet.fingerprint: what an attacker can read, and nothing about where the files lie."""

from __future__ import annotations

import numpy as np

from audit.embeddings import EmbeddingSet
from audit.splits import Grouping, closed_set_split


def _set(recordings: list[str], pooled: np.ndarray | None = None) -> EmbeddingSet:
    speakers = ["s1", "s1", "s1", "s2", "s2", "s2"]
    pooled = np.arange(12, dtype=np.float32).reshape(6, 2) if pooled is None else pooled
    return EmbeddingSet(pooled, np.array(speakers), [f"u{i}" for i in range(6)],
                        grouping=Grouping.of(speakers, recordings, [f"{s}/{r}" for s, r in zip(speakers, recordings)]))


def test_recording_paths_in_another_folder_hash_alike() -> None:
    names = ["a.wav", "a.wav", "b.wav", "c.wav", "d.wav", "d.wav"]
    here = _set([f"/home/me/corpus/{n}" for n in names])
    there = _set([f"/mnt/cache/synthetic/{n}" for n in names])
    assert here.fingerprint() == there.fingerprint()
    assert here.fingerprint(frames=True) == there.fingerprint(frames=True)


def test_which_rows_share_a_recording_changes_the_fingerprint() -> None:
    together = _set(["a", "a", "b", "c", "d", "d"])
    apart = _set(["a", "e", "b", "c", "d", "d"])
    assert together.fingerprint() != apart.fingerprint()


def test_the_order_a_split_reads_changes_the_fingerprint() -> None:
    """Splits draw units in sorted order: renaming that reorders them may change the split, so the hash."""
    ab = _set(["a", "a", "b", "c", "d", "d"])
    ba = _set(["b", "b", "a", "c", "d", "d"])
    assert ab.fingerprint() != ba.fingerprint()


def test_same_fingerprint_means_same_split() -> None:
    names = ["r1", "r2", "r3", "r4", "r5", "r6"]
    here, there = _set([f"/x/{n}" for n in names]), _set([f"/elsewhere/deeper/{n}" for n in names])
    assert here.fingerprint() == there.fingerprint()
    a = closed_set_split(here.grouping, test_fraction=0.34, seed=3)
    b = closed_set_split(there.grouping, test_fraction=0.34, seed=3)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)


def test_the_vectors_change_the_fingerprint() -> None:
    names = ["a", "a", "b", "c", "d", "d"]
    pooled = np.arange(12, dtype=np.float32).reshape(6, 2)
    moved = pooled.copy()
    moved[0, 0] += 1e-3
    assert _set(names, pooled).fingerprint() != _set(names, moved).fingerprint()
