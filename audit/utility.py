"""Utility probes: the downstream accuracy a defense must keep.

A defense is worth nothing if the embeddings no longer do their job. The audit measures that job
with a small probe trained on the defended embeddings of utility-train speakers and scored on
held-out speakers (and, for the ASR probe, held-out sentences):

* ``ctc``: a character CTC head on frames, greedy decoding, scored as CER and WER (jiwer, with
  the project's normaliser on both sides);
* ``classification:COLUMN``: a classifier of a label column on pooled vectors, scored as accuracy.

``retained`` = defended score / undefended score on an accuracy scale (1 - CER for the ASR
probe), with a paired bootstrap CI over test speakers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError

TASK_KINDS = ("ctc", "classification")


@dataclass(frozen=True)
class UtilityTask:
    """The utility task of an audit: ``ctc`` (character ASR) or ``classification`` of ``column``."""

    kind: str
    column: str | None = None

    @classmethod
    def parse(cls, text: str, *, key: str = "utility") -> "UtilityTask":
        """``"ctc"`` or ``"classification:COLUMN"``; anything else is a :class:`ConfigError` naming ``key``."""
        kind, _, column = str(text).partition(":")
        if kind == "ctc" and not column:
            return cls("ctc")
        if kind == "classification" and column:
            return cls("classification", column)
        raise ConfigError(f"{key}={text!r}: expected 'ctc' or 'classification:COLUMN' (e.g. classification:digit)")

    @property
    def name(self) -> str:
        """The task as written in a config."""
        return self.kind if self.column is None else f"{self.kind}:{self.column}"

    @property
    def metric(self) -> str:
        """The headline metric: ``cer`` for the ASR probe, ``accuracy`` for classification."""
        return "cer" if self.kind == "ctc" else "accuracy"

    def feasibility(self, labels: EmbeddingSet) -> str | None:
        """Why this corpus cannot support the task (missing transcripts or label column), or None."""
        if self.kind == "ctc":
            texts = labels.transcripts
            missing = 0 if texts is None else sum(1 for t in texts if not t or not str(t).strip())
            if texts is None or missing:
                return (f"the ctc utility probe needs a transcript for every utterance; "
                        f"{len(labels) if texts is None else missing} of {len(labels)} have none")
            return None
        values = labels.attributes.get(self.column)
        if values is None:
            known = ", ".join(sorted(k for k in labels.attributes if k not in ("speech_rate", "voiced_seconds")))
            return f"no label column {self.column!r} in the corpus (columns: {known or 'none'})"
        present = [v for v in values if v is not None and str(v) != ""]
        if len(present) < len(values):
            return f"label column {self.column!r} is empty for {len(values) - len(present)} of {len(values)} utterances"
        if len(set(map(str, present))) < 2:
            return f"label column {self.column!r} has fewer than 2 classes"
        return None

    def targets(self, view: EmbeddingSet) -> np.ndarray:
        """Per-row targets: class labels (str) for classification, transcripts for ctc."""
        if self.kind == "ctc":
            return np.asarray(view.transcripts, dtype=object)
        return np.array([str(v) for v in view.attributes[self.column]], dtype=object)


def resolve_task(text: str | None, labels: EmbeddingSet) -> UtilityTask | None:
    """The configured task; ``"auto"`` is ``ctc`` when every utterance has a transcript, else none."""
    if text is None or text == "none":
        return None
    if text == "auto":
        task = UtilityTask("ctc")
        return task if task.feasibility(labels) is None else None
    return UtilityTask.parse(text)
