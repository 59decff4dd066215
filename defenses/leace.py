"""LEACE: least-squares concept erasure of the speaker (Belrose et al. 2023, ``concept-erasure``).

LEACE is the smallest affine change (in the data's own covariance metric) after which no
linear classifier can predict the concept better than a constant: it equalises the
class-conditional means of the fitting data. Two erasers are fitted on the owner's training
set, against each row's speaker one-hot:

* a frame eraser on sampled training frames, applied to every frame (frame-level attackers);
* with ``pooled`` (default), a pooled eraser on the mean+std vectors of the frame-erased
  training utterances, applied to the pooled vectors. Erasing frames leaves the per-speaker
  means of frames equal, but the std half of the pooled vector is not linear in the frames
  and can still carry the speaker; the second eraser closes that gap for pooled attackers.

The guarantee is linear and holds on the fitting distribution; non-linear attackers and
unseen speakers are what the audit measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from concept_erasure import LeaceEraser

from audit.defense import (MAX_FIT_FRAMES_PER_UTT, Defense, DefenseFailed, DefenseFamily, DefenseSettings,
                           check_positive_int, meanstd_pool, sample_frames)
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError
from audit.family import check_range


@dataclass
class LeaceSettings(DefenseSettings):
    """``[[defense]] name = "leace"`` keys.

    ``frames_per_utt``: training frames sampled per utterance for the frame eraser;
    ``pooled``: also erase the speaker from the pooled vectors; ``svd_tol``: singular values of
    the whitened speaker cross-covariance below this are not erased (the package's default,
    0.01, leaves weakly correlated speaker directions in place when there are many speakers).
    """

    frames_per_utt: int = MAX_FIT_FRAMES_PER_UTT
    pooled: bool = True
    svd_tol: float = 1e-6

    def validate(self, prefix: str) -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        check_positive_int(prefix, "frames_per_utt", self.frames_per_utt)
        if not isinstance(self.pooled, bool):
            raise ConfigError(f"{prefix}pooled={self.pooled!r}: must be true or false")
        check_range(prefix, "svd_tol", self.svd_tol, 0)


def _one_hot(labels: np.ndarray) -> torch.Tensor:
    """``(n, k)`` float64 one-hot of ``labels`` over their sorted distinct values."""
    _, index = np.unique(labels, return_inverse=True)
    return torch.nn.functional.one_hot(torch.from_numpy(index), int(index.max()) + 1).double()


@dataclass(frozen=True)
class Erasure:
    """A fitted eraser as ``x -> x - ((x - bias) @ right.T) @ left.T``, kept at its rank ``r``.

    ``left`` and ``right`` are ``(D, r)`` and ``(r, D)`` float64: ``I - P`` of the eraser
    truncated to its non-zero singular values, so applying it costs two thin matmuls.
    """

    left: np.ndarray
    right: np.ndarray
    bias: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, labels: np.ndarray, svd_tol: float) -> "Erasure":
        """LEACE of ``labels`` from rows ``x`` (float64 torch on CPU)."""
        eraser = LeaceEraser.fit(torch.from_numpy(np.asarray(x, dtype=np.float64)), _one_hot(labels),
                                 svd_tol=svd_tol)
        u, s, vh = np.linalg.svd((eraser.proj_left @ eraser.proj_right).numpy())
        r = int(np.sum(s > s[0] * s.size * np.finfo(np.float64).eps))
        return cls(u[:, :r] * s[:r], vh[:r], eraser.bias.numpy())

    @property
    def rank(self) -> int:
        """How many directions the eraser changes."""
        return int(self.right.shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The erased rows, float32."""
        x = np.asarray(x, dtype=np.float64)
        return (x - ((x - self.bias) @ self.right.T) @ self.left.T).astype(np.float32)


class Leace(Defense):
    """Frame eraser (``frame_eraser_``) and optional pooled eraser (``pooled_eraser_``) of the speaker."""

    def _fit(self, train: EmbeddingSet) -> None:
        if train.n_speakers < 2:
            raise DefenseFailed(f"LEACE needs >= 2 training speakers, got {train.n_speakers}")
        x, rows = sample_frames(train, per_utt=self.settings.frames_per_utt, seed=self.ctx.seed)
        self.n_classes_ = train.n_speakers
        self.n_fit_frames_ = int(x.shape[0])
        self.frame_eraser_ = Erasure.fit(x, train.speakers[rows], self.settings.svd_tol)
        self.pooled_eraser_ = None
        if self.settings.pooled:
            pooled = np.stack([meanstd_pool(self._frames(train.frames(i), train.utt_ids[i]))
                               for i in range(len(train))])
            self.pooled_eraser_ = Erasure.fit(pooled, train.speakers, self.settings.svd_tol)

    def _frames(self, frames: np.ndarray, utt_id: str) -> np.ndarray:
        return self.frame_eraser_(frames)

    def _pool(self, frames: list[np.ndarray]) -> np.ndarray:
        pooled = super()._pool(frames)
        return pooled if self.pooled_eraser_ is None else self.pooled_eraser_(pooled)

    def report(self) -> dict:
        """Classes erased, fitting frames, and the rank of each eraser's change."""
        return {"n_classes": self.n_classes_, "n_fit_frames": self.n_fit_frames_,
                "frame_rank_erased": self.frame_eraser_.rank,
                "pooled_rank_erased": None if self.pooled_eraser_ is None else self.pooled_eraser_.rank}


DEFENSE = DefenseFamily(
    name="leace", settings=LeaceSettings, estimator=Leace,
    description="LEACE: least-squares linear erasure of the speaker from frames and pooled vectors",
    sweepable=())
