"""k-means quantisation of frames to discrete units (as in HuBERT-style unit pipelines).

Frames are replaced by the centroid of their unit, learned by mini-batch k-means on sampled
training frames: whatever varies within a unit (much of the speaker) is discarded, and the
unit sequence (mostly content) is kept. Frames stay ``(T, D)`` (centroids); the pooled vector
is the utterance's normalised unit histogram ``(k,)``, the natural bag-of-units summary (the
mean+std of centroids would mostly restate it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import MiniBatchKMeans

from audit.defense import (MAX_FIT_FRAMES_PER_UTT, Defense, DefenseFailed, DefenseFamily, DefenseSettings,
                           check_positive_int, sample_frames)
from audit.embeddings import EmbeddingSet

#: Mini-batch size and restarts of the k-means fit.
BATCH_SIZE = 1024
N_INIT = 3


@dataclass
class KMeansSettings(DefenseSettings):
    """``[[defense]] name = "kmeans"`` keys: ``k`` (units, >= 2), ``frames_per_utt`` (fitting frames per utterance)."""

    k: int = 100
    frames_per_utt: int = MAX_FIT_FRAMES_PER_UTT

    def validate(self, prefix: str) -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        check_positive_int(prefix, "k", self.k, low=2)
        check_positive_int(prefix, "frames_per_utt", self.frames_per_utt)


class KMeansUnits(Defense):
    """Frames become their unit's centroid (``kmeans_.cluster_centers_``); pooled is the unit histogram."""

    def _fit(self, train: EmbeddingSet) -> None:
        x, _ = sample_frames(train, per_utt=self.settings.frames_per_utt, seed=self.ctx.seed)
        if self.settings.k > x.shape[0]:
            raise DefenseFailed(f"k-means k={self.settings.k} exceeds the {x.shape[0]} fitting frames")
        self.kmeans_ = MiniBatchKMeans(n_clusters=self.settings.k, batch_size=BATCH_SIZE, n_init=N_INIT,
                                       random_state=self.ctx.seed).fit(x)
        self.units_used_ = int(np.unique(self.kmeans_.labels_).size)
        self.inertia_per_frame_ = float(self.kmeans_.inertia_ / x.shape[0])

    def _units(self, frames: np.ndarray) -> np.ndarray:
        """Unit index of every frame (a centroid frame maps back to its own unit)."""
        return self.kmeans_.predict(np.asarray(frames, dtype=self.kmeans_.cluster_centers_.dtype))

    def _frames(self, frames: np.ndarray, utt_id: str) -> np.ndarray:
        return self.kmeans_.cluster_centers_[self._units(frames)].astype(np.float32)

    def _pool(self, frames: list[np.ndarray]) -> np.ndarray:
        counts = np.stack([np.bincount(self._units(f), minlength=self.settings.k) for f in frames])
        return (counts / np.maximum(counts.sum(1, keepdims=True), 1)).astype(np.float32)

    def report(self) -> dict:
        """Units asked for, units the training frames used, and the mean squared quantisation error."""
        return {"k": self.settings.k, "units_used": self.units_used_,
                "inertia_per_frame": round(self.inertia_per_frame_, 6)}


DEFENSE = DefenseFamily(
    name="kmeans", settings=KMeansSettings, estimator=KMeansUnits,
    description="k-means quantisation of frames to k discrete units (pooled: normalised unit histogram)",
    sweepable=("k",))
