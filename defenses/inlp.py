"""INLP: iterative nullspace projection of the speaker (Ravfogel et al. 2020), the classic baseline.

Each iteration fits a linear speaker classifier (ridge, on the raw vectors after the current
projection), and removes the span of its weight rows: with ``B`` an orthonormal basis of all
directions removed so far, the projection is ``P = I - B B^T``, an orthogonal projection onto
the intersection of the classifiers' nullspaces. Iterations stop after ``n_iterations``, when
every dimension is gone, or earlier when the classifier's accuracy on a held-out 20% of the
fitting utterances is within ``stop_margin`` of chance (the held-out majority-class rate): a
linear probe then no longer reads the speaker, and removing more only costs utility.

As for LEACE, one projection is fitted on sampled training frames (applied to frames) and,
with ``pooled``, a second on the mean+std vectors of the projected training utterances
(applied to pooled vectors), since the std half is not linear in the frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import RidgeClassifier

from audit.defense import (MAX_FIT_FRAMES_PER_UTT, Defense, DefenseFailed, DefenseFamily, DefenseSettings,
                           check_positive_int, meanstd_pool, sample_frames)
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError
from audit.family import check_range

#: Share of each speaker's fitting utterances held out to measure the stopping accuracy.
HELDOUT_FRACTION = 0.2
#: Weight singular values below this fraction of the largest are numerical noise, not directions.
RANK_TOL = 1e-8


@dataclass
class InlpSettings(DefenseSettings):
    """``[[defense]] name = "inlp"`` keys.

    ``n_iterations``: most classifiers fitted and removed per view; ``stop_margin``: stop once
    held-out accuracy <= chance + this; ``alpha``: ridge penalty; ``frames_per_utt``: training
    frames sampled per utterance; ``pooled``: also project the pooled vectors.
    """

    n_iterations: int = 10
    stop_margin: float = 0.02
    alpha: float = 1.0
    frames_per_utt: int = MAX_FIT_FRAMES_PER_UTT
    pooled: bool = True

    def validate(self, prefix: str) -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        check_positive_int(prefix, "n_iterations", self.n_iterations)
        check_range(prefix, "stop_margin", self.stop_margin, 0, 1, open_low=False)
        check_range(prefix, "alpha", self.alpha, 0)
        check_positive_int(prefix, "frames_per_utt", self.frames_per_utt)
        if not isinstance(self.pooled, bool):
            raise ConfigError(f"{prefix}pooled={self.pooled!r}: must be true or false")


def heldout_mask(speakers: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """Rows whose utterance is held out: ~20% of each speaker's utterances (none of a one-utterance speaker).

    ``speakers`` holds one label per utterance, ``rows`` each fitting row's utterance, so an
    utterance's rows are all on one side.
    """
    rng = np.random.default_rng(seed)
    held = []
    for speaker in np.unique(speakers):
        utts = rng.permutation(np.flatnonzero(speakers == speaker))
        if utts.size >= 2:
            held.append(utts[: max(1, int(round(HELDOUT_FRACTION * utts.size)))])
    if not held:
        raise DefenseFailed("INLP needs a speaker with >= 2 training utterances to measure held-out accuracy")
    return np.isin(rows, np.concatenate(held))


def project_out(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``x (I - B B^T)`` for an orthonormal ``basis`` ``B`` of shape ``(D, r)``."""
    return x - (x @ basis) @ basis.T


def nullspace_basis(x: np.ndarray, y: np.ndarray, held: np.ndarray, settings: InlpSettings) -> tuple[np.ndarray, dict]:
    """Orthonormal basis ``(D, r)`` of the directions INLP removes from ``x``, and the per-iteration facts."""
    basis = np.zeros((x.shape[1], 0))
    _, counts = np.unique(y[held], return_counts=True)
    chance = float(counts.max() / counts.sum())
    accuracy, removed = [], 0
    while removed < settings.n_iterations and basis.shape[1] < x.shape[1]:
        xp = project_out(x, basis)
        clf = RidgeClassifier(alpha=settings.alpha).fit(xp[~held], y[~held])
        accuracy.append(round(float(clf.score(xp[held], y[held])), 4))
        if accuracy[-1] <= chance + settings.stop_margin:
            break
        weights = project_out(np.atleast_2d(clf.coef_).astype(np.float64), basis)
        u, s, _ = np.linalg.svd(weights.T, full_matrices=False)
        if s[0] <= 0:
            break
        new = u[:, s > RANK_TOL * s[0]]
        basis = np.linalg.qr(np.hstack([basis, new]))[0]
        removed += 1
    return basis, {"iterations": removed, "rank_removed": int(basis.shape[1]), "heldout_accuracy": accuracy,
                   "chance": round(chance, 4)}


class Inlp(Defense):
    """Frame projection (``frame_basis_``) and optional pooled projection (``pooled_basis_``), both ``I - B B^T``."""

    def _fit(self, train: EmbeddingSet) -> None:
        if train.n_speakers < 2:
            raise DefenseFailed(f"INLP needs >= 2 training speakers, got {train.n_speakers}")
        x, rows = sample_frames(train, per_utt=self.settings.frames_per_utt, seed=self.ctx.seed)
        held = heldout_mask(train.speakers, rows, self.ctx.seed)
        self.info_: dict[str, dict] = {}
        self.frame_basis_, self.info_["frames"] = nullspace_basis(x.astype(np.float64), train.speakers[rows], held,
                                                                  self.settings)
        self.pooled_basis_ = None
        if self.settings.pooled:
            pooled = np.stack([meanstd_pool(self._frames(train.frames(i), train.utt_ids[i]))
                               for i in range(len(train))]).astype(np.float64)
            held = heldout_mask(train.speakers, np.arange(len(train)), self.ctx.seed)
            self.pooled_basis_, self.info_["pooled"] = nullspace_basis(pooled, train.speakers, held, self.settings)

    def _frames(self, frames: np.ndarray, utt_id: str) -> np.ndarray:
        return project_out(frames.astype(np.float64), self.frame_basis_).astype(np.float32)

    def _pool(self, frames: list[np.ndarray]) -> np.ndarray:
        pooled = super()._pool(frames)
        if self.pooled_basis_ is None:
            return pooled
        return project_out(pooled.astype(np.float64), self.pooled_basis_).astype(np.float32)

    def report(self) -> dict:
        """Per view: iterations whose directions were removed, rank removed, held-out accuracy per iteration."""
        return dict(self.info_)


DEFENSE = DefenseFamily(
    name="inlp", settings=InlpSettings, estimator=Inlp,
    description="INLP: iterative nullspace projection of linear speaker classifiers from frames and pooled vectors",
    sweepable=("n_iterations", "stop_margin"))
