"""What a defense hands the system: the :class:`Defense` base, its settings base, its registry entry.

A defense is the model owner's transform of a layer's embeddings. It is one module in
``defenses/`` (or another package, registered through the ``speech_audit.defenses`` entry
point) that ends with one :class:`DefenseFamily` value, ``DEFENSE``. The entry carries what the
rest of the system needs, so the config, the defense runner and the report never name a
defense by hand:

* ``settings``: a dataclass deriving from :class:`DefenseSettings` (the keys of its
  ``[[defense]]`` table), with ``validate(prefix)`` raising :class:`ConfigError` naming the key;
* ``estimator``: the :class:`Defense` subclass, built as ``estimator(settings, ctx)``;
* ``description``: one line for the report.

Contract (scikit-learn's): ``fit(train) -> self`` learns state ending in ``_`` from the owner's
data only; ``transform(view) -> EmbeddingSet`` maps any set to a set of the same layout (frames
and pooled vectors, labels unchanged), so every attack family and every utility probe runs
unchanged on defended embeddings. Subclasses implement ``_fit`` and ``_frames`` (and, where
the pooled vector is not the mean+std of the defended frames, ``_pool``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError
from audit.estimators import check_is_fitted

#: Frames per utterance a linear defense samples for fitting (caps memory on long corpora).
MAX_FIT_FRAMES_PER_UTT = 64


class DefenseFailed(RuntimeError):
    """A defense setting could not be fitted or applied (diverged, degenerate data); the reason is the message."""


@dataclass(frozen=True)
class DefenseContext:
    """What a defense may use besides its settings: the seed, the utility task, the device, progress bars.

    ``utility`` is the audit's utility task (``audit.utility.UtilityTask``) for defenses that
    train a utility head (adversarial regularization); ``frame_rate`` is the layer's frames
    per second; ``device`` is the resolved torch device trained defenses run on, in float32
    (``"cpu"``, ``"cuda"``, ``"cuda:N"``; the run's, :attr:`audit.family.RunContext.device`).
    """

    seed: int = 0
    utility: Any = None
    frame_rate: float = 50.0
    progress: bool = False
    device: str = "cpu"


class DefenseSettings:
    """Base of a defense's settings dataclass (its ``[[defense]]`` keys besides ``name``, ``sweep``, ``layers``).

    ``KEY_ALIASES`` maps a TOML key that cannot be a Python name (``lambda``) to its field.
    """

    KEY_ALIASES: ClassVar[dict[str, str]] = {}

    def validate(self, prefix: str) -> None:
        """Raise :class:`ConfigError` naming the bad key (defenses override)."""


def meanstd_pool(frames: np.ndarray) -> np.ndarray:
    """Mean and (population) standard deviation over frames, as the store pools: ``(2D,)`` float32."""
    frames = np.asarray(frames, dtype=np.float32)
    return np.concatenate([frames.mean(0), frames.std(0)]).astype(np.float32)


def sample_frames(view: EmbeddingSet, *, per_utt: int = MAX_FIT_FRAMES_PER_UTT,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_utt`` seeded frames of every utterance stacked ``(M, D)``, with each frame's row index."""
    rng = np.random.default_rng(seed)
    chunks, rows = [], []
    for i in range(len(view)):
        f = view.frames(i)
        if f.shape[0] > per_utt:
            f = f[np.sort(rng.choice(f.shape[0], per_utt, replace=False))]
        chunks.append(f)
        rows.append(np.full(f.shape[0], i))
    return np.concatenate(chunks).astype(np.float32), np.concatenate(rows)


class Defense(ABC):
    """Base of every defense: ``fit(train) -> self``, ``transform(view) -> EmbeddingSet``.

    ``fit`` records ``fit_info_`` (speakers, utterances, seconds) and ``history_`` (per-epoch
    losses of trained defenses, empty otherwise). ``transform`` computes every row's defended
    frames once and keeps them in memory, so attacks that read frames several times see the
    same values (noise defenses are seeded per utterance, not per read).
    """

    #: True when the defense needs frame-level states (pooled-only layers cannot be defended).
    needs_frames: ClassVar[bool] = True

    def __init__(self, settings: DefenseSettings, ctx: DefenseContext | None = None) -> None:
        self.settings = settings
        self.ctx = ctx or DefenseContext()

    def fit(self, train: EmbeddingSet) -> "Defense":
        """Learn the transform from the owner's ``train`` set; return self."""
        if self.needs_frames and train.frame_source is None:
            raise DefenseFailed(f"{type(self).__name__} needs frame-level states; this layer is pooled-only")
        t0 = time.perf_counter()
        self.history_: list[dict] = []
        self._fit(train)
        self.fit_info_ = {"n_speakers": train.n_speakers, "n_utterances": len(train),
                          "seconds": round(time.perf_counter() - t0, 2)}
        return self

    def transform(self, view: EmbeddingSet) -> EmbeddingSet:
        """``view`` with defended frames and pooled vectors; labels, transcripts and grouping unchanged."""
        check_is_fitted(self, "fit_info_")
        frames = [self._frames(view.frames(i), view.utt_ids[i]) for i in range(len(view))]
        for i, f in enumerate(frames):
            if not np.all(np.isfinite(f)):
                raise DefenseFailed(f"{type(self).__name__} produced non-finite frames for {view.utt_ids[i]!r}")
        pooled = self._pool(frames)
        return EmbeddingSet(pooled, view.speakers, view.utt_ids, view.attributes, _frame_lookup(frames), view.layer,
                            view.transcripts, view.audio_source, view.grouping)

    @abstractmethod
    def _fit(self, train: EmbeddingSet) -> None:
        """Learn the defense's state (attributes ending in ``_``) from ``train``."""

    @abstractmethod
    def _frames(self, frames: np.ndarray, utt_id: str) -> np.ndarray:
        """The defended ``(T, D')`` frames of one utterance's ``(T, D)`` frames."""

    def _pool(self, frames: list[np.ndarray]) -> np.ndarray:
        """Pooled vectors of the defended frames (default: mean+std, as the store pools)."""
        return np.stack([meanstd_pool(f) for f in frames])

    def report(self) -> dict:
        """What the report shows about the fitted defense beyond ``fit_info_`` (defenses override)."""
        return {}


def _frame_lookup(frames: list[np.ndarray]) -> Callable[[int], np.ndarray]:
    return lambda i: frames[int(i)]


@dataclass(frozen=True)
class DefenseFamily:
    """One defense's registry entry (see the module docstring)."""

    name: str
    settings: type
    estimator: type
    description: str = ""
    #: Settings that may be swept (numeric parameters); others are fixed per table.
    sweepable: tuple[str, ...] = field(default=())

    def build(self, settings: DefenseSettings, ctx: DefenseContext) -> Defense:
        """A fresh, unfitted defense."""
        return self.estimator(settings, ctx)


def check_positive_int(prefix: str, key: str, value: Any, low: int = 1) -> None:
    """Raise :class:`ConfigError` naming ``prefix + key`` unless ``value`` is an int >= ``low``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{prefix}{key}={value!r}: must be an integer >= {low}")


__all__ = ["Defense", "DefenseContext", "DefenseFailed", "DefenseFamily", "DefenseSettings", "check_positive_int",
           "meanstd_pool", "sample_frames"]
