"""Additive Gaussian noise on frames, scaled to each dimension's spread in the training frames.

Every frame gets ``sigma * std_d * N(0, 1)`` added in dimension ``d``, with ``std_d`` the
per-dimension standard deviation of sampled training frames, so ``sigma`` reads as a
signal-to-noise knob independent of the layer's scale. The noise of an utterance is seeded
from ``(seed, crc32(utt_id))``: the same utterance always gets the same noise, in any set and
any run, so an attacker cannot average it away by reading the utterance twice. ``sigma = 0``
returns the frames unchanged, so its pooled vectors are the store's mean+std pooling.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from audit.defense import (MAX_FIT_FRAMES_PER_UTT, Defense, DefenseFamily, DefenseSettings, check_positive_int,
                           sample_frames)
from audit.embeddings import EmbeddingSet
from audit.family import check_range


@dataclass
class NoiseSettings(DefenseSettings):
    """``[[defense]] name = "noise"`` keys: ``sigma`` (noise std in units of each dimension's training std, >= 0)
    and ``frames_per_utt`` (training frames sampled per utterance to estimate that std)."""

    sigma: float = 0.5
    frames_per_utt: int = MAX_FIT_FRAMES_PER_UTT

    def validate(self, prefix: str) -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        check_range(prefix, "sigma", self.sigma, 0, open_low=False)
        check_positive_int(prefix, "frames_per_utt", self.frames_per_utt)


class GaussianNoise(Defense):
    """Adds per-utterance seeded noise of std ``sigma * std_`` (``std_``: per-dimension training std)."""

    def _fit(self, train: EmbeddingSet) -> None:
        x, _ = sample_frames(train, per_utt=self.settings.frames_per_utt, seed=self.ctx.seed)
        self.std_ = x.astype(np.float64).std(0)

    def _frames(self, frames: np.ndarray, utt_id: str) -> np.ndarray:
        if self.settings.sigma == 0:
            return frames
        rng = np.random.default_rng([self.ctx.seed, zlib.crc32(utt_id.encode("utf-8"))])
        noise = rng.standard_normal(frames.shape) * (self.settings.sigma * self.std_)
        return (frames + noise).astype(np.float32)

    def report(self) -> dict:
        """The noise level, relative and in the layer's units (mean over dimensions)."""
        return {"sigma": self.settings.sigma, "mean_noise_std": round(float(self.settings.sigma * self.std_.mean()), 6)}


DEFENSE = DefenseFamily(
    name="noise", settings=NoiseSettings, estimator=GaussianNoise,
    description="additive Gaussian noise on frames, sigma times each dimension's training std, seeded per utterance",
    sweepable=("sigma",))
