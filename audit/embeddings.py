"""Labelled views of one store layer, the unit every attack and defense consumes.

An :class:`EmbeddingSet` pairs a layer's pooled embeddings (and lazy frame-level access) with
the corpus labels of the same utterances. Attacks ``fit`` on one set and ``evaluate`` on
another; defenses map a set to a set of the same layout, so attacks run unchanged on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from audit.audio import load_audio
from audit.corpus import Corpus, speech_rate
from audit.errors import StoreError
from audit.splits import Grouping
from audit.store import EmbeddingStore


@dataclass
class EmbeddingSet:
    """Pooled ``(N, D)`` embeddings, speakers and attributes of N utterances of one layer.

    ``frame_source(i)`` returns the ``(T, D)`` frames of row ``i`` (None for pooled-only sets);
    ``attributes`` maps a name (``gender``, ``speech_rate``, ...) to an object array with None
    where the value is unknown; ``transcripts`` holds the reference text (None where unknown);
    ``audio_source(i)`` decodes row ``i``'s 16 kHz audio, used only by the inversion attack's
    targets and judges; ``grouping`` holds each row's recording, session and start time so
    that any split made inside an attacker keeps recordings together (default: every row its
    own recording).
    """

    pooled: np.ndarray
    speakers: np.ndarray
    utt_ids: list[str]
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    frame_source: Callable[[int], np.ndarray] | None = None
    layer: int | None = None
    transcripts: np.ndarray | None = None
    audio_source: Callable[[int], np.ndarray] | None = None
    grouping: Grouping | None = None

    def __post_init__(self) -> None:
        if self.grouping is None:
            self.grouping = Grouping.of(self.speakers)

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    @property
    def n_speakers(self) -> int:
        """Number of distinct speakers."""
        return int(np.unique(self.speakers).size)

    def frames(self, i: int) -> np.ndarray:
        """Frame-level ``(T, D)`` states of row ``i``."""
        if self.frame_source is None:
            raise StoreError("this embedding set is pooled-only: no frame-level states")
        return self.frame_source(i)

    def checked_frames(self, i: int, dim: int | None = None) -> np.ndarray:
        """Frames of row ``i`` as float32, checked 2-D, non-empty, finite, ``dim`` wide (else :class:`StoreError`)."""
        x = np.asarray(self.frames(i), dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise StoreError(f"frames of {self.utt_ids[i]!r} have shape {x.shape}, expected (T>0, D)")
        if dim is not None and x.shape[1] != dim:
            raise StoreError(f"frames of {self.utt_ids[i]!r} have D={x.shape[1]}, expected D={dim}")
        if not np.isfinite(x).all():
            raise StoreError(f"frames of {self.utt_ids[i]!r} contain non-finite values")
        return x

    def audio(self, i: int) -> np.ndarray:
        """16 kHz mono audio of row ``i``."""
        if self.audio_source is None:
            raise StoreError("this embedding set has no audio attached")
        return self.audio_source(i)

    def fingerprint(self, *, frames: bool = False) -> str:
        """sha256 of everything an attacker can read from this set: vectors, labels, grouping (and frames).

        Two sets with the same fingerprint hold the same data, so an attacker fitted on one is
        the attacker fitted on the other (see :meth:`audit.family.RunContext.fitted`). ``frames``
        also hashes every row's frame-level states (for attackers that read them). Recordings
        and sessions enter by their sorted rank, which is all a split reads of them, so a corpus
        whose recording ids are file paths hashes alike in any folder.
        """
        h = hashlib.sha256()

        def add(tag: str, data: bytes) -> None:
            h.update(f"{tag}:{len(data)}:".encode())
            h.update(data)

        pooled = np.ascontiguousarray(self.pooled)
        add("pooled", f"{pooled.dtype.str}{pooled.shape}".encode() + pooled.tobytes())
        add("speakers", "\0".join(map(str, self.speakers)).encode())
        add("utt_ids", "\0".join(self.utt_ids).encode())
        add("layer", repr(self.layer).encode())
        g = self.grouping
        add("grouping", _ranks(g.recordings) + b"\1" + _ranks(g.sessions)
            + b"\1" + np.asarray(g.starts, dtype=np.float64).tobytes())
        for name in sorted(self.attributes):
            add(f"attribute {name}", repr(list(self.attributes[name])).encode())
        add("transcripts", repr(None if self.transcripts is None else list(self.transcripts)).encode())
        if frames and self.frame_source is not None:
            for i in range(len(self)):
                x = np.ascontiguousarray(self.frames(i))
                add("frames", f"{x.dtype.str}{x.shape}".encode() + x.tobytes())
        return h.hexdigest()

    def subset(self, index: Sequence[int] | np.ndarray) -> "EmbeddingSet":
        """Rows ``index`` as a new set (frames and audio stay lazy)."""
        index = np.asarray(index, dtype=int)
        return EmbeddingSet(self.pooled[index], self.speakers[index], [self.utt_ids[i] for i in index],
                            {k: v[index] for k, v in self.attributes.items()}, _reindexed(self.frame_source, index),
                            self.layer, None if self.transcripts is None else self.transcripts[index],
                            _reindexed(self.audio_source, index), self.grouping.subset(index))

    def with_pooled(self, pooled: np.ndarray, *, keep_frames: bool = False) -> "EmbeddingSet":
        """The same rows and labels with other pooled vectors (e.g. an attacker's embeddings).

        The frames are dropped unless ``keep_frames``: a scorer of an encoder's embeddings whose
        learning-curve points retrain the encoder needs them to embed the rows again.
        """
        if pooled.shape[0] != len(self):
            raise StoreError(f"with_pooled: {pooled.shape[0]} rows for a set of {len(self)}")
        return EmbeddingSet(pooled, self.speakers, self.utt_ids, self.attributes,
                            self.frame_source if keep_frames else None, self.layer, self.transcripts,
                            self.audio_source, self.grouping)


def _ranks(labels: np.ndarray) -> bytes:
    """Each label's rank among the sorted distinct labels, as bytes: the grouping without its names."""
    return np.unique(np.asarray(labels).astype(str), return_inverse=True)[1].astype(np.int64).tobytes()


def splice(base: EmbeddingSet, other: EmbeddingSet, rows: Sequence[int] | np.ndarray) -> EmbeddingSet:
    """``base`` with rows ``rows`` taken from ``other`` (same utterances, e.g. the undefended view).

    Used for attacker scenarios where some of the test data reach the attacker undefended
    (VoicePrivacy's *ignorant* attacker enrols on original speech). Both sets must hold the
    same utterances in the same order and vectors of the same dimension.
    """
    if base.utt_ids != other.utt_ids or base.pooled.shape != other.pooled.shape:
        raise StoreError("splice: the two sets must hold the same utterances with vectors of the same dimension")
    rows = np.asarray(rows, dtype=int)
    pooled = base.pooled.copy()
    pooled[rows] = other.pooled[rows]
    frame_source = None
    if base.frame_source is not None and other.frame_source is not None:
        chosen = set(rows.tolist())
        frame_source = lambda i: (other if int(i) in chosen else base).frames(int(i))  # noqa: E731
    return EmbeddingSet(pooled, base.speakers, base.utt_ids, base.attributes, frame_source, base.layer,
                        base.transcripts, base.audio_source, base.grouping)


def _reindexed(source: Callable[[int], np.ndarray] | None, index: np.ndarray) -> Callable[[int], np.ndarray] | None:
    """``source`` seen through a row selection (None stays None)."""
    if source is None:
        return None
    return lambda i: source(int(index[i]))


def corpus_attributes(corpus: Corpus, voiced_seconds: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Attribute columns of a corpus as object arrays, plus derived ``speech_rate`` (chars/s).

    ``voiced_seconds`` (one per utterance, from the store's voice activity detection) is the
    speech rate's denominator; without it the file duration is used.
    """
    names = sorted({k for u in corpus for k in u.attributes})
    out = {name: np.array(corpus.attribute_values(name), dtype=object) for name in names}
    voiced = [None] * len(corpus) if voiced_seconds is None else list(voiced_seconds)
    out["speech_rate"] = np.array([speech_rate(u, v) for u, v in zip(corpus, voiced)], dtype=object)
    if voiced_seconds is not None:
        out["voiced_seconds"] = np.array([float(v) for v in voiced], dtype=object)
    return out


def corpus_grouping(corpus: Corpus) -> Grouping:
    """Speaker, recording, session and start time of every utterance."""
    utts = corpus.utterances
    return Grouping.of([u.speaker for u in utts], [u.recording for u in utts], [u.session for u in utts],
                       [u.start for u in utts])


def layer_set(store: EmbeddingStore, corpus: Corpus, layer: int, *, pooling: str = "meanstd") -> EmbeddingSet:
    """The labelled :class:`EmbeddingSet` of one layer of a store built from ``corpus``."""
    if store.utt_ids != [u.utt_id for u in corpus]:
        raise StoreError(f"{store.root}: store utterances do not match corpus {corpus.name}")
    utts = corpus.utterances
    return EmbeddingSet(store.pooled(layer, pooling), np.array(corpus.speakers), list(store.utt_ids),
                        corpus_attributes(corpus, store.voiced_seconds()), lambda i: store.frames(layer, i), layer,
                        np.array([u.transcript for u in utts], dtype=object),
                        lambda i: load_audio(utts[i].path, start=utts[i].start, end=utts[i].end),
                        corpus_grouping(corpus))
