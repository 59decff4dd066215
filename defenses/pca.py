"""PCA to ``k`` dimensions: keep the layer's ``k`` highest-variance directions of the training frames.

Dimensionality reduction is the cheapest defense an owner can ship: if speaker identity lives
in low-variance directions, discarding them removes it while content (high variance) stays.
Frames become ``(T, k)`` and the pooled vector is the mean+std of those, ``2k`` wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA

from audit.defense import (MAX_FIT_FRAMES_PER_UTT, Defense, DefenseFailed, DefenseFamily, DefenseSettings,
                           check_positive_int, sample_frames)
from audit.embeddings import EmbeddingSet


@dataclass
class PcaSettings(DefenseSettings):
    """``[[defense]] name = "pca"`` keys: ``k`` (dimensions kept, >= 1), ``frames_per_utt`` (fitting frames per utt)."""

    k: int = 32
    frames_per_utt: int = MAX_FIT_FRAMES_PER_UTT

    def validate(self, prefix: str) -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        check_positive_int(prefix, "k", self.k)
        check_positive_int(prefix, "frames_per_utt", self.frames_per_utt)


class Pca(Defense):
    """Projects frames on the top ``k`` principal components (``pca_``) of sampled training frames."""

    def _fit(self, train: EmbeddingSet) -> None:
        x, _ = sample_frames(train, per_utt=self.settings.frames_per_utt, seed=self.ctx.seed)
        if self.settings.k > min(x.shape):
            raise DefenseFailed(f"PCA k={self.settings.k} exceeds the dimension D={x.shape[1]} or the "
                                f"{x.shape[0]} fitting frames")
        self.pca_ = PCA(n_components=self.settings.k, random_state=self.ctx.seed).fit(x)

    def _frames(self, frames: np.ndarray, utt_id: str) -> np.ndarray:
        return self.pca_.transform(frames).astype(np.float32)

    def report(self) -> dict:
        """Dimensions kept and the share of training-frame variance they explain."""
        return {"k": self.settings.k, "explained_variance": round(float(self.pca_.explained_variance_ratio_.sum()), 4)}


DEFENSE = DefenseFamily(
    name="pca", settings=PcaSettings, estimator=Pca,
    description="PCA of frames to k dimensions fitted on training frames (pooled: mean+std of the k-dim frames)",
    sweepable=("k",))
