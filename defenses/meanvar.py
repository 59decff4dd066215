"""Per-utterance mean/variance normalisation of frames (utterance-level CMVN).

Each dimension of an utterance's frames is shifted to zero mean and scaled to unit variance
over that utterance, removing the utterance-level offsets and scales where much speaker and
channel identity lives. Nothing is learned.

By construction the mean+std pooled vector of normalised frames is (nearly) constant: zeros
then ``std / sqrt(var + eps)`` ~ ones. Pooled attackers therefore read chance whatever the
frames still hold; only frame-level attackers measure what this defense leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.defense import Defense, DefenseFamily, DefenseSettings
from audit.embeddings import EmbeddingSet
from audit.family import check_range


@dataclass
class MeanVarSettings(DefenseSettings):
    """``[[defense]] name = "meanvar"`` keys: ``eps`` (> 0, added to the variance before dividing)."""

    eps: float = 1e-5

    def validate(self, prefix: str) -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        check_range(prefix, "eps", self.eps, 0)


class MeanVarNorm(Defense):
    """``(x - mean) / sqrt(var + eps)`` per dimension over each utterance's frames."""

    def _fit(self, train: EmbeddingSet) -> None:
        """Nothing to learn: the normalisation uses each utterance's own statistics."""

    def _frames(self, frames: np.ndarray, utt_id: str) -> np.ndarray:
        x = frames.astype(np.float64)
        return ((x - x.mean(0)) / np.sqrt(x.var(0) + self.settings.eps)).astype(np.float32)


DEFENSE = DefenseFamily(
    name="meanvar", settings=MeanVarSettings, estimator=MeanVarNorm,
    description="per-utterance mean/variance normalisation of frames (pooled mean+std becomes constant)",
    sweepable=())
